"""Exploring a library: more like this, image + text, filters, capture dates, near-duplicates.

Known answers come from first principles: a stored vector is its own nearest neighbour with
score 1, rankings are recomputed by brute force from the stored vectors, and a stand-in model
with known outputs (an image's vector is its colour thumbnail) makes a half-size copy of a
photo near-identical to it and unrelated photos far apart."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import EMBEDDING_DIM, run_cli, stored_rows, write_config
from imagegen import photo, write_photo
from PIL import Image

from image_search.config import Settings
from image_search.duplicates import connected_groups, find_duplicates
from image_search.errors import ConfigError
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.models.precision import planned_spec
from image_search.query import Query, build_filters, combine, parse_date
from image_search.search import Searcher
from image_search.source_files import MB
from image_search.store import SCHEMA_VERSION, Filters, NewRow, index_name, open_store
from image_search.store.rows import Rows

THUMBNAIL_DIM = 48  # 4 x 4 pixels x 3 colours


class ThumbnailModel:
    """A stand-in model with known outputs: an image's vector is its 4x4 colour thumbnail,
    centred, so resized and re-encoded copies land next to their original; a text's vector
    is random but fixed by its bytes."""

    name = "fake/thumbnails"

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        rows = []
        for image in images:
            small = image.convert("RGB").resize((4, 4), Image.Resampling.BOX)
            values = np.asarray(small, dtype=np.float32).ravel()
            rows.append(values - values.mean())
        return np.stack(rows)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return np.stack(
            [np.random.default_rng(list(t.encode())).standard_normal(THUMBNAIL_DIM) for t in texts]
        ).astype(np.float32)


def refusing_embedder(settings: Settings) -> Embedder:
    """An embedder that fails the test if anything asks for its model."""

    def load(name: str, device: str) -> None:
        raise AssertionError("the model was loaded")

    return Embedder(settings.model_name, "cpu", settings.dimension, loader=load)


@pytest.fixture
def fake_settings(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings(model_name="fake/thumbnails", dimension=THUMBNAIL_DIM)
    settings.source_directory.mkdir(parents=True, exist_ok=True)
    return settings


@pytest.fixture
def fake_embedder() -> Embedder:
    return Embedder("fake/thumbnails", "cpu", THUMBNAIL_DIM, loader=lambda n, d: ThumbnailModel())


@pytest.fixture
def indexed(settings: Settings, photos: list[Path], shared_embedder: Embedder) -> Settings:
    run_index(settings, shared_embedder)
    return settings


def search(settings: Settings, embedder: Embedder, query: Query, k: int | None = None,
           filters: Filters | None = None):
    with open_store(settings) as store:
        return Searcher(settings, store, embedder).search(query, k, filters or Filters())


def brute_force(settings: Settings, vector: np.ndarray, keep=lambda row: True) -> list[tuple]:
    """(file_path, score) of every stored row that `keep` accepts, best first."""
    rows = [row for row in stored_rows(settings) if keep(row)]
    scores = [float(np.dot(row["embedding"], vector)) for row in rows]
    return sorted(zip((r["file_path"] for r in rows), scores, strict=True), key=lambda x: -x[1])


def write_exif_jpeg(path: Path, seed: int, taken: datetime) -> Path:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    path.parent.mkdir(parents=True, exist_ok=True)
    photo(seed).save(path, format="JPEG", exif=exif.tobytes())
    return path


def set_mtime(path: Path, when: datetime) -> None:
    os.utime(path, (when.timestamp(), when.timestamp()))


# ---------------------------------------------------------------- more like this


def test_like_an_indexed_file_is_its_stored_vector_and_never_loads_the_model(
    indexed: Settings, photos: list[Path]
) -> None:
    embedder = refusing_embedder(indexed)
    target = photos[4]
    result = search(indexed, embedder, Query(like=str(target)), k=len(photos))

    assert not embedder.loaded
    assert result.results[0].file_path == str(target)
    assert result.results[0].score == pytest.approx(1.0, abs=1e-6)
    stored = {row["file_path"]: row for row in stored_rows(indexed)}[str(target)]
    expected = brute_force(indexed, stored["embedding"])
    assert [m.file_path for m in result.results] == [path for path, _ in expected]
    np.testing.assert_allclose([m.score for m in result.results], [s for _, s in expected],
                               atol=1e-5)
    assert result.description == f"like {target.name}"
    query_jpg = (result.output_dir / "query.jpg").read_bytes()
    assert query_jpg == Path(stored["processed_path"]).read_bytes()
    assert not (result.output_dir / "query.txt").exists()


def test_like_a_file_that_is_not_indexed_embeds_it_as_an_image(
    indexed: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere" / "rotated.png"
    outside.parent.mkdir()
    Image.open(photos[0]).rotate(15).save(outside)

    like = search(indexed, shared_embedder, Query(like=str(outside)), k=len(photos))
    image = search(indexed, shared_embedder, Query(image=outside), k=len(photos))

    assert [m.file_path for m in like.results] == [m.file_path for m in image.results]
    np.testing.assert_allclose([m.score for m in like.results], [m.score for m in image.results],
                               atol=1e-6)
    assert (like.output_dir / "query.jpg").is_file()


def test_like_through_the_cli(indexed: Settings, photos: list[Path], tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", indexed)
    # A relative path names the same indexed file.
    done = run_cli("search", "--env", str(config), "--like", photos[3].name, "--json",
                   cwd=photos[3].parent)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert set(answer) == {"output_dir", "searched", "results"}
    first = answer["results"][0]
    assert (first["file_path"], first["score"]) == (str(photos[3]), pytest.approx(1.0, abs=1e-6))
    assert set(first) == {"rank", "score", "file_name", "file_path", "taken_at"}
    assert sorted(p.name for p in Path(answer["output_dir"]).iterdir()) == sorted(
        ["config.json", "results.jsonl", "query.jpg", "query.json", photos[3].name]
    )


# ---------------------------------------------------------------- image + text


def test_a_combined_query_is_the_normalised_sum_and_differs_from_both_parts(
    indexed: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    image, text, k = photos[1], "a bright red square at night", len(photos)
    both = search(indexed, shared_embedder, Query(image=image, text=text), k)
    only_image = search(indexed, shared_embedder, Query(image=image), k)
    only_text = search(indexed, shared_embedder, Query(text=text), k)

    from image_search.images import ResizeSpec, prepare_file

    image_vector = shared_embedder.embed_images([prepare_file(image, ResizeSpec.of(indexed))])[0]
    text_vector = shared_embedder.embed_texts([text])[0]
    mixed = image_vector + text_vector
    expected = brute_force(indexed, mixed / np.linalg.norm(mixed))
    assert [m.file_path for m in both.results] == [path for path, _ in expected]
    np.testing.assert_allclose([m.score for m in both.results], [s for _, s in expected],
                               atol=1e-5)

    def scores(result) -> dict[str, float]:
        return {m.file_path: m.score for m in result.results}

    for part in (only_image, only_text):
        differences = [abs(scores(both)[p] - scores(part)[p]) for p in scores(both)]
        assert max(differences) > 1e-3
    assert {p.name for p in both.output_dir.iterdir()} >= {"query.jpg", "query.txt"}
    assert (both.output_dir / "query.txt").read_text(encoding="utf-8") == text + "\n"
    assert both.description == f"0.5 × image + 0.5 × text '{text}'"


def test_the_text_weight_moves_the_query_from_the_image_to_the_text(
    indexed: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    image, text, k = photos[2], "green leaves", len(photos)

    def scores(query: Query) -> list[float]:
        result = search(indexed, shared_embedder, query, k)
        return [m.score for m in sorted(result.results, key=lambda m: m.file_path)]

    np.testing.assert_allclose(
        scores(Query(image=image, text=text, text_weight=0.0)), scores(Query(image=image)),
        atol=1e-5)
    np.testing.assert_allclose(
        scores(Query(image=image, text=text, text_weight=1.0)), scores(Query(text=text)),
        atol=1e-5)
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(combine(a, b, 0.25), np.array([3, 1]) / np.sqrt(10), atol=1e-6)


@pytest.mark.parametrize(
    ("query", "said"),
    [
        (Query(like="x.jpg", text="cat"), "--like"),
        (Query(image=Path("x.jpg"), text="   "), "empty"),
        (Query(image=Path("x.jpg"), text="cat", text_weight=1.5), "--text-weight"),
        (Query(), "give a query"),
    ],
)
def test_a_query_that_cannot_run_names_what_to_fix(query: Query, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        query.check()


# ---------------------------------------------------------------- filters


def test_under_returns_only_files_under_the_folders(
    indexed: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    sub = indexed.source_directory / "sub"
    under_sub = [p for p in photos if sub in p.parents]
    result = search(indexed, shared_embedder, Query(image=photos[0]), k=5,
                    filters=build_filters([sub]))
    assert sorted(m.file_path for m in result.results) == sorted(map(str, under_sub))

    two = build_filters([sub, indexed.source_directory / "nowhere"])
    again = search(indexed, shared_embedder, Query(image=photos[0]), k=5, filters=two)
    assert sorted(m.file_path for m in again.results) == sorted(map(str, under_sub))
    # A folder whose name starts like another is not inside it.
    (indexed.source_directory / "sub2").mkdir()
    assert not search(indexed, shared_embedder, Query(image=photos[0]), k=5,
                      filters=build_filters([indexed.source_directory / "su"])).results


def test_min_score_cuts_the_ranking_and_keeps_its_order(
    indexed: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    everything = search(indexed, shared_embedder, Query(image=photos[5]), k=len(photos))
    cut = sorted(m.score for m in everything.results)[len(photos) // 2]
    kept = search(indexed, shared_embedder, Query(image=photos[5]), k=len(photos),
                  filters=build_filters(min_score=cut))
    expected = [m for m in everything.results if m.score >= cut]
    assert [m.file_path for m in kept.results] == [m.file_path for m in expected]
    assert all(m.score >= cut for m in kept.results) and len(expected) < len(photos)


def test_date_filters_use_exif_when_present_and_mtime_otherwise(
    settings: Settings, shared_embedder: Embedder
) -> None:
    folder = settings.source_directory
    exif_2019 = write_exif_jpeg(folder / "exif-2019.jpg", 1, datetime(2019, 7, 14, 10, 30))
    set_mtime(exif_2019, datetime(2023, 3, 1, 12, 0))  # copied later: EXIF still wins
    exif_2021 = write_exif_jpeg(folder / "exif-2021.jpg", 2, datetime(2021, 12, 31, 23, 59))
    plain_2020 = write_photo(folder / "plain-2020.png", seed=3)
    set_mtime(plain_2020, datetime(2020, 5, 5, 8, 0))
    plain_2022 = write_photo(folder / "plain-2022.webp", seed=4)
    set_mtime(plain_2022, datetime(2022, 1, 1, 0, 0))
    dates = {
        exif_2019: datetime(2019, 7, 14, 10, 30),
        exif_2021: datetime(2021, 12, 31, 23, 59),
        plain_2020: datetime.fromtimestamp(plain_2020.stat().st_mtime_ns / 1e9),
        plain_2022: datetime.fromtimestamp(plain_2022.stat().st_mtime_ns / 1e9),
    }
    run_index(settings, shared_embedder)

    everything = search(settings, shared_embedder, Query(text="a photo"), k=10)
    assert {m.file_path: m.taken_at for m in everything.results} == {
        str(p): d for p, d in dates.items()
    }
    for after, before in [("2020", "2022"), ("2019-07-14T10:30", None), (None, "2020-05-05"),
                          ("2021-12-31", "2022-01-01T00:00:01")]:
        filters = build_filters(taken_after=after, taken_before=before)
        low = parse_date("", after) if after else datetime.min
        high = parse_date("", before) if before else datetime.max
        expected = {str(p) for p, d in dates.items() if low <= d < high}
        found = search(settings, shared_embedder, Query(text="a photo"), k=10, filters=filters)
        assert {m.file_path for m in found.results} == expected, (after, before)
    record = everything.to_json()["results"][0]
    assert record["taken_at"] == dates[Path(record["file_path"])].isoformat()


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"taken_after": "last tuesday"}, "--taken-after"),
        ({"taken_after": "2024-02-01", "taken_before": "2024-01-01"}, "earlier than"),
        ({"min_score": 1.5}, "--min-score"),
    ],
)
def test_bad_filters_name_the_option(options: dict, said: str) -> None:
    with pytest.raises(ConfigError, match=said):
        build_filters(**options)


def test_filter_mistakes_on_the_command_line_exit_2_with_one_line(
    indexed: Settings, photos: list[Path], tmp_path: Path
) -> None:
    config = write_config(tmp_path / "config.json", indexed)
    for extra in (
        ["--image", str(photos[0]), "--taken-after", "soon"],
        ["--like", str(photos[0]), "--text", "cat"],
        ["--image", str(photos[0]), "--text", "cat", "--text-weight", "2"],
    ):
        done = run_cli("search", "--env", str(config), *extra)
        assert done.returncode == 2, (extra, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


LIBRARY_ROWS = 2000  # in 100 folders: a folder or a 20-day span keeps 1% of them
LIBRARY_START = datetime(2015, 1, 1)


@pytest.fixture
def library(settings: Settings) -> tuple[Settings, np.ndarray]:
    """2,000 stored rows of random unit vectors: a folder of 20 rows in each of 100 folders,
    one capture day each."""
    vectors = np.random.default_rng(11).standard_normal((LIBRARY_ROWS, EMBEDDING_DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    rows = [
        NewRow(f"/library/f{i % 100:02d}/img{i:05d}.jpg", f"c{i}", 1, 1, "/none", vector,
               LIBRARY_START + timedelta(days=i))
        for i, vector in enumerate(vectors)
    ]
    with open_store(settings) as store:
        store.schema.ensure(planned_spec(settings))
        store.rows.upsert(rows, settings.model_name)
    return settings, vectors


def library_truth(vectors: np.ndarray, query: np.ndarray, keep, k: int) -> list[str]:
    ids = [i for i in range(len(vectors)) if keep(i)]
    ids.sort(key=lambda i: -float(vectors[i] @ query))
    return [f"/library/f{i % 100:02d}/img{i:05d}.jpg" for i in ids[:k]]


@pytest.mark.parametrize("kind", ["under", "dates"])
def test_a_filter_keeping_1_percent_stays_on_the_index_and_returns_k(
    library: tuple[Settings, np.ndarray], kind: str
) -> None:
    settings, vectors = library
    if kind == "under":
        filters, keep = Filters(under=("/library/f37",)), lambda i: i % 100 == 37
    else:
        start = LIBRARY_START + timedelta(days=1000)
        filters = Filters(taken_after=start, taken_before=start + timedelta(days=20))
        keep = lambda i: 1000 <= i < 1020  # noqa: E731
    query = np.random.default_rng(5).standard_normal(EMBEDDING_DIM).astype(np.float32)
    query /= np.linalg.norm(query)
    with open_store(settings) as store:
        matches = store.rows.nearest(query, 10, filters)
        plan = store.rows.explain_nearest(query, 10, filters)
    assert sum(map(keep, range(LIBRARY_ROWS))) == LIBRARY_ROWS // 100
    assert index_name(settings.table_name, "embedding_hnsw") in plan
    assert [m.file_path for m in matches] == library_truth(vectors, query, keep, 10)
    np.testing.assert_allclose(
        [m.score for m in matches],
        sorted((float(vectors[i] @ query) for i in range(LIBRARY_ROWS) if keep(i)),
               reverse=True)[:10],
        atol=1e-5,
    )


def test_when_the_index_gives_up_an_exact_scan_still_returns_k(
    library: tuple[Settings, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pgvector ends an iterative scan after hnsw.max_scan_tuples, which a filter keeping very
    few rows of a large table can reach. Here iterative scans are switched off instead, so the
    index returns only the matches among its first ef_search candidates (fewer than k), and
    the exact scan of the matching rows has to answer."""
    settings, vectors = library
    original = Rows._search_settings
    index_results: list[int] = []

    def give_up_early(self, conn, k, filters, exact) -> None:
        original(self, conn, k, filters, exact)
        if not exact:
            conn.execute("SET LOCAL hnsw.iterative_scan = off")

    def counting(self, conn, vector, k, filters, exact=False):
        rows = original_nearest(self, conn, vector, k, filters, exact)
        if not exact:
            index_results.append(len(rows))
        return rows

    original_nearest = Rows._nearest
    monkeypatch.setattr(Rows, "_search_settings", give_up_early)
    monkeypatch.setattr(Rows, "_nearest", counting)
    query = vectors[123]
    with open_store(settings) as store:
        matches = store.rows.nearest(query, 10, Filters(under=("/library/f05",)))
    assert index_results and index_results[0] < 10
    keep = lambda i: i % 100 == 5  # noqa: E731
    assert [m.file_path for m in matches] == library_truth(vectors, query, keep, 10)


# ---------------------------------------------------------------- capture dates, migration


def as_schema_2(settings: Settings) -> None:
    """The settings' table as schema 2 made it: no capture dates."""
    table = settings.table_name
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute(f'ALTER TABLE "{table}" DROP COLUMN taken_at')
        conn.execute(
            "UPDATE image_search_meta SET schema_version = 2 WHERE table_name = %s", [table]
        )


def test_a_database_of_schema_2_keeps_its_rows_and_gains_dates_on_the_next_index(
    settings: Settings, shared_embedder: Embedder
) -> None:
    folder = settings.source_directory
    with_exif = write_exif_jpeg(folder / "camera.jpg", 1, datetime(2018, 2, 3, 4, 5, 6))
    plain = write_photo(folder / "scan.png", seed=2)
    set_mtime(plain, datetime(2016, 6, 1, 9, 0))
    run_index(settings, shared_embedder)
    as_schema_2(settings)
    before = {row["file_path"]: row for row in stored_rows(settings)}

    # A search on the old table works (and adds the empty column) without the model.
    embedder = refusing_embedder(settings)
    result = search(settings, embedder, Query(like=str(plain)))
    assert [m.taken_at for m in result.results] == [None, None]

    report = run_index(settings, embedder)

    assert (report.added, report.updated, report.unchanged, report.dated) == (0, 0, 2, 2)
    assert "capture dates filled for 2 stored images" in report.summary()
    assert not embedder.loaded  # headers only: nothing was embedded again
    after = {row["file_path"]: row for row in stored_rows(settings)}
    assert after.keys() == before.keys()
    for path, row in after.items():
        np.testing.assert_array_equal(row["embedding"], before[path]["embedding"])
    with open_store(settings) as store:
        assert store.info().schema_version == SCHEMA_VERSION
        matches = store.rows.nearest(after[str(plain)]["embedding"], 2)
    assert {m.file_path: m.taken_at for m in matches} == {
        str(with_exif): datetime(2018, 2, 3, 4, 5, 6),
        str(plain): datetime(2016, 6, 1, 9, 0),
    }
    assert run_index(settings, embedder).dated == 0


def test_dates_filled_for_old_rows_read_no_file_over_max_file_mb(
    settings: Settings, shared_embedder: Embedder
) -> None:
    """Filling the dates of an old table opens each file as indexing does: within the
    settings' max-file-mb, not the default's (a file over it gets its mtime)."""
    big = write_exif_jpeg(settings.source_directory / "big.jpg", 3, datetime(2018, 2, 3, 4, 5))
    with big.open("ab") as out:  # after the JPEG's end: a viewer still shows it, with its EXIF
        out.write(bytes(2 * MB))
    set_mtime(big, datetime(2016, 6, 1, 9, 0))
    run_index(settings, shared_embedder)
    as_schema_2(settings)

    report = run_index(dataclasses.replace(settings, max_file_mb=1), refusing_embedder(settings))

    assert report.dated == 1
    with open_store(settings) as store:
        [match] = store.rows.nearest(stored_rows(settings)[0]["embedding"], 1)
    assert match.taken_at == datetime(2016, 6, 1, 9, 0)  # its mtime: the file was not read


# ---------------------------------------------------------------- near-duplicates


def all_pairs_groups(settings: Settings, threshold: float) -> list[set[str]]:
    """The expected answer the slow way: every pair compared."""
    rows = stored_rows(settings)
    pairs = [
        (i, j)
        for i in range(len(rows))
        for j in range(i + 1, len(rows))
        if float(rows[i]["embedding"] @ rows[j]["embedding"]) >= threshold - 1e-6
    ]
    return [{rows[i]["file_path"] for i in group} for group in connected_groups(pairs)]


@pytest.fixture
def library_with_copies(fake_settings: Settings, fake_embedder: Embedder) -> dict[str, Path]:
    folder = fake_settings.source_directory
    files = {f"photo{i}": write_photo(folder / f"photo{i}.png", seed=20 + i) for i in range(6)}
    files["copy"] = folder / "backup" / "photo0-copy.png"
    files["copy"].parent.mkdir()
    files["copy"].write_bytes(files["photo0"].read_bytes())
    set_mtime(files["photo0"], datetime(2020, 1, 1))
    set_mtime(files["copy"], datetime(2024, 1, 1))  # the copy is younger
    files["half"] = folder / "photo3-small.jpg"
    with Image.open(files["photo3"]) as original:
        original.resize((80, 60), Image.Resampling.LANCZOS).save(files["half"], quality=80)
    run_index(fake_settings, fake_embedder)
    return files


def test_duplicates_finds_copies_and_a_half_size_copy_but_not_unrelated_photos(
    fake_settings: Settings, library_with_copies: dict[str, Path]
) -> None:
    files = library_with_copies
    threshold = 0.95
    snapshot = {p: p.read_bytes() for p in files.values()}
    with open_store(fake_settings) as store:
        report = find_duplicates(store, threshold)
        plan = store.rows.explain_close_pairs(threshold, 10)
        one_part = store.rows.close_pairs(threshold, 10, parts=1)
        three_parts = store.rows.close_pairs(threshold, 10, parts=3)

    # Each image's neighbours come from the HNSW index, never from comparing every pair.
    assert index_name(fake_settings.table_name, "embedding_hnsw") in plan
    assert sorted(one_part) == sorted(three_parts)
    groups = [[m.image.file_path for m in g.members] for g in report.groups]
    assert sorted(map(set, groups), key=sorted) == sorted(
        all_pairs_groups(fake_settings, threshold), key=sorted)
    by_first = {group[0]: group for group in groups}
    assert by_first[str(files["photo0"])] == [str(files["photo0"]), str(files["copy"])]
    assert by_first[str(files["photo3"])] == [str(files["photo3"]), str(files["half"])]
    scores = {m.image.file_path: m.score for g in report.groups for m in g.members}
    assert scores[str(files["copy"])] == 1.0
    assert threshold <= scores[str(files["half"])] < 1.0
    unrelated = [str(files[f"photo{i}"]) for i in (1, 2, 4, 5)]
    assert not set(unrelated) & set(scores)
    assert {p: p.read_bytes() for p in files.values()} == snapshot  # nothing touched

    rows = {r["file_path"]: r["embedding"] for r in stored_rows(fake_settings)}
    closest_unrelated = max(
        float(rows[a] @ rows[b]) for a in rows for b in rows
        if a < b and {a, b} <= set(unrelated) | {str(files["photo0"]), str(files["photo3"])}
    )
    assert closest_unrelated < threshold  # the stand-in model keeps them apart, as asserted


def test_duplicates_under_a_folder_and_as_json(
    fake_settings: Settings, library_with_copies: dict[str, Path]
) -> None:
    files = library_with_copies
    with open_store(fake_settings) as store:
        inside = find_duplicates(store, 0.95, build_filters([files["copy"].parent]))
        whole = find_duplicates(store, 0.95).to_json()
    assert inside.groups == []  # the backup folder alone holds no pair
    assert set(whole) == {"threshold", "groups"} and whole["threshold"] == 0.95
    first = whole["groups"][0]["files"]
    assert all(set(f) == {"file_path", "file_name", "score"} for f in first)
    assert first[0]["score"] == 1.0
    assert first[0]["file_name"] == Path(first[0]["file_path"]).name


def test_the_one_to_keep_has_most_pixels_then_is_oldest(
    fake_settings: Settings, fake_embedder: Embedder
) -> None:
    folder = fake_settings.source_directory
    small = write_photo(folder / "a-small.png", seed=7, width=120, height=90)
    large = folder / "z-large.png"
    photo(7, width=120, height=90).resize((240, 180), Image.Resampling.LANCZOS).save(large)
    set_mtime(small, datetime(2010, 1, 1))  # older, but fewer pixels
    same_new = write_exif_jpeg(folder / "b-new.jpg", 8, datetime(2022, 1, 1))
    same_old = folder / "c-old.jpg"
    same_old.write_bytes(same_new.read_bytes().replace(b"2022:01:01", b"2012:01:01"))
    run_index(fake_settings, fake_embedder)
    with open_store(fake_settings) as store:
        groups = find_duplicates(store, 0.95).groups
    firsts = {Path(g.members[0].image.file_path).name: len(g.members) for g in groups}
    assert firsts == {"z-large.png": 2, "c-old.jpg": 2}


def test_duplicates_through_the_cli(
    fake_settings: Settings, library_with_copies: dict[str, Path], tmp_path: Path
) -> None:
    """`duplicates` compares stored vectors only: it never needs the model, so a table made
    by the stand-in model serves the command line too."""
    config = write_config(tmp_path / "config.json", fake_settings)
    done = run_cli("duplicates", "--env", str(config), "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["threshold"] == 0.95
    assert {f["file_path"] for g in answer["groups"] for f in g["files"]} == {
        str(library_with_copies[name]) for name in ("photo0", "copy", "photo3", "half")
    }
    text = run_cli("duplicates", "--env", str(config), "--threshold", "0.99")
    assert text.returncode == 0, text.stderr
    assert "keep" in text.stdout and str(library_with_copies["copy"]) in text.stdout
    assert "Nothing was deleted" in text.stdout
    bad = run_cli("duplicates", "--env", str(config), "--threshold", "1.5")
    assert bad.returncode == 2 and "--threshold" in bad.stderr


def test_connected_groups_join_chains() -> None:
    assert sorted(connected_groups([(1, 2), (3, 4), (2, 5), (6, 6)])) == [[1, 2, 5], [3, 4]]
