"""Words in photos: matching what a user types against what OCR read (tolerant of its usual
errors), the OCR itself with the real PP-OCRv4 weights (they ship in a wheel), the words
stored beside the rows and following them, the back-fill of tables indexed before, and
`search --words` alone and fused with the other parts of a query.

Expected rankings are computed here from first principles: the reciprocal rank fusion of
the stored vectors' cosine ranking and the word ranking, and edit distances by brute force."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_config
from signs import sign_photo, write_plain, write_sign

from image_search import ocr, words_index
from image_search.config import Settings
from image_search.errors import ImageSearchError
from image_search.images import ResizeSpec, prepare_file
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.ocr import ENGINE, TextReader, connected_regions, min_area_rect
from image_search.query import Query
from image_search.search import Searcher
from image_search.store import NewRow, open_store
from image_search.store.words import WORDS_TABLE, ReadWords, TableWords
from image_search.words import (
    allowed_errors,
    candidate_pieces,
    normalise,
    score_text,
    substring_distance,
    tokens,
)
from image_search.words_search import RRF_K, search_words

# --------------------------------------------------------------- matching what OCR read


def test_normalising_folds_case_accents_widths_and_drops_punctuation() -> None:
    assert normalise("Café Crème, 45.90 €") == "cafecreme4590"
    assert normalise("STRAẞE Ärger") == "strassearger"
    assert normalise("ＩＮＶＯＩＣＥ　２０２３") == "invoice2023"  # full-width, as CJK text sets
    assert normalise("東京駅 出口") == "東京駅出口"
    assert tokens("  invoice, 2023! ") == ["invoice", "2023"]
    assert tokens("東京駅") == ["東京駅"]


def found(query: str, text: str) -> float:
    return score_text(tokens(query), normalise(text)).score


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ("invoice 2023", "INVOICE2023"),  # the space lost
        ("invoice2023", "Invoice 2023"),  # a space added
        ("coffee menu", "CoffeeMe nu"),  # a line split inside a word
        ("2023 invoice", "invoice 2023"),  # another order
        ("voic", "INVOICE"),  # part of a word
        ("creme", "Crème brûlée"),  # accents
        ("東京", "ここは東京駅です"),  # CJK, no spaces
    ],
)
def test_ocr_text_is_found_whole(query: str, text: str) -> None:
    assert found(query, text) == 1.0


@pytest.mark.parametrize(
    ("query", "text", "misread"),
    [
        ("invoice", "INVO1CE", 1),  # one character wrong
        ("platform", "Platfrm 9", 1),  # one dropped
        ("parking", "parkiing", 1),  # one added
        ("departures", "DEPARTVRE5", 2),  # two in a long word
    ],
)
def test_a_misread_character_costs_its_share(query: str, text: str, misread: int) -> None:
    assert found(query, text) == pytest.approx(1 - misread / len(normalise(query)))


def test_short_words_must_be_exact_and_unrelated_text_scores_nothing() -> None:
    assert found("exit", "EXLT ONLY") == 0.75
    assert found("bus", "BVS STOP") == 0.0  # 3 characters: no error allowed
    assert found("invoice", "receipt") == 0.0
    assert found("invoice 2023", "INVOICE 1999") == pytest.approx(7 / 11)  # one word of two
    assert [allowed_errors(t) for t in ("abc", "abcd", "abcdefg", "abcdefgh")] == [0, 1, 1, 2]


def brute_force_distance(token: str, text: str) -> int:
    """The fewest edits for `token` to equal some substring of `text`, by trying them all."""

    def edit(a: str, b: str) -> int:
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            previous, row[0] = row[0], i
            for j, cb in enumerate(b, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
        return row[-1]

    subs = {text[i:j] for i in range(len(text) + 1) for j in range(i, len(text) + 1)}
    return min(edit(token, sub) for sub in subs)


def test_substring_distance_agrees_with_brute_force() -> None:
    rng = random.Random(5)
    for _ in range(300):
        token = "".join(rng.choice("abc") for _ in range(rng.randint(1, 6)))
        text = "".join(rng.choice("abcd") for _ in range(rng.randint(0, 9)))
        assert substring_distance(token, text) == brute_force_distance(token, text), (token, text)


def test_every_text_a_word_matches_holds_one_of_its_candidate_pieces() -> None:
    """What the database narrows by (plain substrings) never loses a photo the score finds."""
    rng = random.Random(7)
    alphabet = "abcdefghij東京"
    for _ in range(400):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        misread = list(word)
        for _ in range(rng.randint(0, allowed_errors(word))):
            position = rng.randrange(len(misread))
            change = rng.choice(["replace", "drop", "add"])
            if change == "replace":
                misread[position] = rng.choice(alphabet)
            elif change == "drop" and len(misread) > 1:
                del misread[position]
            else:
                misread.insert(position, rng.choice(alphabet))
        text = "xy" + "".join(misread) + "z"
        assert score_text([word], text).score > 0
        assert any(piece in text for piece in candidate_pieces(word)), (word, text)


# --------------------------------------------------------------- OCR with the real weights


@pytest.fixture(scope="module")
def reader() -> TextReader:
    reader = TextReader()
    reader.load()
    return reader


def processed(image_path: Path, width: int = 640, height: int = 360) -> object:
    return prepare_file(image_path, ResizeSpec(width, height, "fit", 250_000_000))


def test_the_ocr_reads_a_photographed_sign(reader: TextReader, tmp_path: Path) -> None:
    image = processed(write_sign(tmp_path / "sign.jpg", "INVOICE 2023", turn=-5))
    lines = reader.read(image)
    read = normalise(" ".join(line.text for line in lines))
    assert substring_distance("invoice2023", read) <= 1, lines
    best = max(lines, key=lambda line: line.confidence)
    assert best.confidence > 0.8
    assert all(0 <= x < 640 and 0 <= y < 360 for x, y in best.box)
    (left, top), (right, _), _, (_, bottom) = best.box
    assert right - left > 3 * (bottom - top)  # one line across, not a column


def test_photos_without_text_give_no_word_to_find(reader: TextReader, tmp_path: Path) -> None:
    for background in ("coffee.webp", "brick.png", "coins.png"):
        lines = reader.read(processed(write_plain(tmp_path / f"{background}.jpg", background)))
        assert all(len(normalise(line.text)) < 4 for line in lines), (background, lines)


def test_text_regions_become_boxes_around_them() -> None:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (200, 120), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([(20, 40), (120, 20), (126, 50), (26, 70)], fill=255)  # a turned bar
    draw.rectangle((150, 90, 190, 110), fill=255)
    regions = connected_regions(np.asarray(canvas) > 0)
    assert len(regions) == 2
    corners, short = min_area_rect(regions[0])
    sides = sorted(np.linalg.norm(np.roll(corners, -1, axis=0) - corners, axis=1))
    assert short == pytest.approx(sides[0])
    assert sides[0] == pytest.approx(np.hypot(6, 30), abs=2)  # the bar's short side
    assert sides[-1] == pytest.approx(np.hypot(100, 20), abs=2)  # and its long one


# --------------------------------------------------------------- index and search


@pytest.fixture
def ocr_settings(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings(resize_width=640, resize_height=360, ocr=True)
    settings.source_directory.mkdir(parents=True, exist_ok=True)
    return settings


def words_search(settings: Settings, embedder: Embedder, query: Query, **kw) -> list[str]:
    with open_store(settings) as store:
        result = Searcher(settings, store, embedder).search(query, **kw)
    return [Path(m.file_path).name for m in result.results]


def stored_words(settings: Settings) -> dict[str, str]:
    """File name: the normalised text stored for it."""
    with open_store(settings) as store, store.database.connection() as conn:
        rows = conn.execute(
            f"SELECT t.file_name, w.search_text FROM {settings.table_name} t "
            f"JOIN {WORDS_TABLE} w USING (content_hash)"
        ).fetchall()
    return dict(rows)


def words_rows_for(settings: Settings, content_hashes: list[str]) -> int:
    with open_store(settings) as store, store.database.connection() as conn:
        query = f"SELECT count(*) FROM {WORDS_TABLE} WHERE content_hash = ANY(%s)"
        return conn.execute(query, [content_hashes]).fetchone()[0]


def test_index_then_search_words_finds_the_sign_first(
    ocr_settings: Settings, tmp_path: Path
) -> None:
    """README's flow with the real OCR models: a folder with a photographed sign, indexed;
    a word on the sign finds it first."""
    folder = ocr_settings.source_directory
    write_sign(folder / "shop" / "receipt.jpg", "INVOICE 2023")
    write_sign(folder / "menu.jpg", "Coffee Menu", background="rocket.jpg", turn=-3)
    write_plain(folder / "cup.jpg")
    config = write_config(tmp_path / "config.json", ocr_settings)
    indexed = run_cli("index", "--env", str(config), "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["added"] == 3

    for words in ("invoice", "2023 INVOICE", "invoise"):  # the last with a letter wrong
        result = run_cli("search", "--env", str(config), "--words", words, "--json")
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["results"][0]["file_name"] == "receipt.jpg", (words, answer)
        assert all(r["file_name"] != "cup.jpg" for r in answer["results"])
    record = json.loads((Path(answer["output_dir"]) / "query.json").read_text())
    assert record["words"]["text"] == "invoise" and record["words"]["ranking"] == "words alone"
    assert record["parts"] == []
    shown = run_cli("search", "--env", str(config), "--words", "coffee")
    assert "for words 'coffee'" in shown.stdout and "menu.jpg" in shown.stdout


def test_words_follow_updates_moves_and_removals(
    ocr_settings: Settings, shared_embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = ocr_settings.source_directory
    sign = write_sign(folder / "a" / "sign.jpg", "PLATFORM 9", background="astronaut.jpg")
    write_plain(folder / "plain.jpg", background="hubble_deep_field.jpg")
    run_index(ocr_settings, shared_embedder)
    assert words_search(ocr_settings, shared_embedder, Query(words="platform")) == ["sign.jpg"]
    first_content = content_of(ocr_settings, sign)

    # Updated: new content at the same path, new words.
    write_sign(sign, "BAKERY OPEN", background="astronaut.jpg")
    report = run_index(ocr_settings, shared_embedder)
    assert report.updated == 1
    assert words_search(ocr_settings, shared_embedder, Query(words="platform")) == []
    assert words_search(ocr_settings, shared_embedder, Query(words="bakery")) == ["sign.jpg"]
    assert words_rows_for(ocr_settings, [first_content]) == 0  # no row holds it: dropped

    # Moved: the same content elsewhere keeps its words, and nothing is read again.
    reads: list[int] = []
    original_read = TextReader.read
    monkeypatch.setattr(
        TextReader, "read", lambda self, image: reads.append(1) or original_read(self, image)
    )
    moved = folder / "b" / "moved.jpg"
    moved.parent.mkdir()
    shutil.move(sign, moved)
    report = run_index(ocr_settings, shared_embedder)
    assert (report.added, report.removed, reads) == (1, 1, [])
    assert words_search(ocr_settings, shared_embedder, Query(words="bakery")) == ["moved.jpg"]

    # Removed: no longer found; its words stay while its row is kept as missing (a share
    # that comes back needs no reading again), and go with the row when it is purged.
    content = content_of(ocr_settings, moved)
    moved.unlink()
    run_index(ocr_settings, shared_embedder)
    assert words_search(ocr_settings, shared_embedder, Query(words="bakery")) == []
    assert words_rows_for(ocr_settings, [content]) == 1
    run_index(ocr_settings, shared_embedder, prune=True)
    assert words_rows_for(ocr_settings, [content]) == 0


def content_of(settings: Settings, path: Path) -> str:
    with open_store(settings) as store:
        return store.rows.stored_files_at([str(path)])[str(path)].content_hash


def test_tables_indexed_before_get_their_words_without_embedding_again(
    ocr_settings: Settings, shared_embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    folder = ocr_settings.source_directory
    write_sign(folder / "exit.jpg", "EMERGENCY EXIT", background="coins.png", turn=2)
    write_sign(folder / "gate.jpg", "DEPARTURES GATE 12", background="chelsea.jpg", turn=-7)
    without = dataclasses.replace(ocr_settings, ocr=False)
    run_index(without, shared_embedder)
    assert stored_words(without) == {}
    with open_store(without) as store:
        result = Searcher(without, store, shared_embedder).search(Query(words="emergency"))
    assert result.results == [] and "no words have been read" in result.warnings[0]

    def refuse(name: str, device: str) -> None:
        raise AssertionError("the model was loaded")

    refusing = Embedder(ocr_settings.model_name, "cpu", ocr_settings.dimension, loader=refuse)
    report = run_index(ocr_settings, refusing)
    assert (report.added, report.updated, report.unchanged, report.words_read) == (0, 0, 2, 2)
    assert "words read in 2 stored images" in report.summary()
    assert words_search(ocr_settings, shared_embedder, Query(words="emergency")) == ["exit.jpg"]
    assert words_search(ocr_settings, shared_embedder, Query(words="departures")) == ["gate.jpg"]
    assert run_index(ocr_settings, refusing).words_read == 0  # read once


def test_words_and_vectors_are_fused_by_their_ranks(
    make_settings: Callable[..., Settings], shared_embedder: Embedder
) -> None:
    """Rows with chosen vectors and words: the fused ranking is the reciprocal rank fusion
    computed here, photos first in both rankings first; filters apply to both."""
    settings = make_settings(ocr=True)
    rng = np.random.default_rng(3)
    query = unit(rng.standard_normal(settings.dimension))
    names = [f"/photos/{group}/p{i}.jpg" for i, group in enumerate("aabbccddee")]
    vectors = [unit(query + (i + 1) * 0.4 * rng.standard_normal(len(query))) for i in range(10)]
    texts = {3: "INVOICE 2023", 6: "invoice", 8: "INVO1CE paid", 1: "menu"}
    with open_store(settings) as store:
        store.schema.ensure(spec_of(settings))
        store.rows.upsert(
            [NewRow(name, f"c{i}", 1, i, "", vector) for i, (name, vector) in
             enumerate(zip(names, vectors, strict=True))],
            "test",
        )
        table_words = TableWords(store.database, store.table)
        table_words.ensure()
        table_words.write(
            [ReadWords(f"c{i}", [{"text": t}], normalise(t)) for i, t in texts.items()], ENGINE
        )
        got = search_words(store, "invoice", 10, no_filters(), query)
        under_c = search_words(store, "invoice", 10, folder_filter("/photos/c"), query)
        alone = search_words(store, "invoice", 10, no_filters())

    by_vector = sorted(range(10), key=lambda i: -float(vectors[i] @ query))
    by_words = [6, 3, 8]  # whole word first (the shorter text first), then one letter wrong
    assert [names[i] for i in by_words] == [m.file_path for m in alone]
    fused = {i: 1 / (RRF_K + by_vector.index(i) + 1) for i in range(10)}
    for rank, i in enumerate(by_words, start=1):
        fused[i] += 1 / (RRF_K + rank)
    expected = sorted(range(10), key=lambda i: -fused[i])
    assert [m.file_path for m in got] == [names[i] for i in expected]
    assert got[0].score == pytest.approx(fused[expected[0]] / (2 / (RRF_K + 1)), rel=1e-5)
    assert {m.file_path for m in under_c} == {names[4], names[5]}


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def spec_of(settings: Settings):  # noqa: ANN201
    from image_search.models.precision import planned_spec

    return dataclasses.replace(planned_spec(settings), precision="fp32")


def no_filters():  # noqa: ANN201
    from image_search.store import NO_FILTERS

    return NO_FILTERS


def folder_filter(folder: str):  # noqa: ANN201
    from image_search.query import build_filters

    return build_filters([folder])


def test_words_with_a_text_query_and_a_folder_filter(
    ocr_settings: Settings, shared_embedder: Embedder, tmp_path: Path
) -> None:
    folder = ocr_settings.source_directory
    write_sign(folder / "in" / "ticket.jpg", "TICKET OFFICE", background="rocket.jpg")
    write_sign(folder / "out" / "ticket2.jpg", "TICKET MACHINE", background="coffee.webp")
    write_plain(folder / "in" / "view.jpg", background="astronaut.jpg")
    config = write_config(tmp_path / "config.json", ocr_settings)
    assert run_cli("index", "--env", str(config)).returncode == 0
    result = run_cli(
        "search", "--env", str(config), "--words", "ticket", "--text", "a sign",
        "--under", str(folder / "in"), "--json",
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [r["file_name"] for r in answer["results"]][0] == "ticket.jpg"
    assert "ticket2.jpg" not in [r["file_name"] for r in answer["results"]]
    record = json.loads((Path(answer["output_dir"]) / "query.json").read_text())
    assert record["words"]["ranking"].startswith("reciprocal rank fusion")
    assert record["parts"][0]["kind"] == "text"


@pytest.mark.parametrize("words", ["", "  ", "!?."])
def test_words_without_a_letter_or_digit_are_refused(
    settings: Settings, tmp_path: Path, words: str
) -> None:
    config = write_config(tmp_path / "config.json", settings)
    result = run_cli("search", "--env", str(config), "--words", words)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--words" in result.stderr


def test_without_the_ocr_models_the_index_warns_once_and_goes_on(
    ocr_settings: Settings,
    shared_embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(ocr, "models_folder", lambda: None)
    monkeypatch.setattr(words_index, "_warned_missing", False)
    write_sign(ocr_settings.source_directory / "s.jpg", "NO MODELS", background="brick.png")
    caplog.set_level(logging.WARNING, logger="image_search")
    for _ in range(2):
        report = run_index(ocr_settings, shared_embedder)
    assert report.unchanged == 1 and stored_words(ocr_settings) == {}
    warnings = [r.message for r in caplog.records if "words in photos are not read" in r.message]
    assert len(warnings) == 1 and "rapidocr-onnxruntime" in warnings[0]


def test_the_words_of_a_sign_are_shown_for_a_stored_file(
    ocr_settings: Settings, shared_embedder: Embedder
) -> None:
    sign = write_sign(ocr_settings.source_directory / "hotel.jpg", "GRAND HOTEL", turn=3)
    run_index(ocr_settings, shared_embedder)
    with open_store(ocr_settings) as store:
        lines = TableWords(store.database, store.table).lines_of(str(sign))
        unknown = TableWords(store.database, store.table).lines_of("/no/such/file.jpg")
    assert lines is not None and unknown is None
    assert substring_distance("grandhotel", normalise(" ".join(x["text"] for x in lines))) <= 1
    assert all(0 < line["confidence"] <= 1 and len(line["box"]) == 4 for line in lines)


def test_a_sign_image_in_memory_is_read_the_same(reader: TextReader) -> None:
    """The GPU path hands the batch step tensors; the words are those of the Pillow image."""
    import torch  # a dev dependency: its absence is a broken environment, not a skip

    image = sign_photo("OPEN DAILY").resize((640, 360))
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    pillow = words_index.as_pillow(tensor)
    assert [line.text for line in reader.read(pillow)] == [line.text for line in reader.read(image)]


@pytest.mark.cluster
def test_words_are_read_by_the_ray_workers(
    ocr_settings: Settings, process_backend: dict[str, str]
) -> None:
    """`ray-address` local: the actors that embed a batch read its words too (none are left
    for the end of the run to read)."""
    from ray_runs import index  # Ray is a dev dependency: never a skip

    folder = ocr_settings.source_directory
    write_sign(folder / "ray.jpg", "RAY STATION 7", background="astronaut.jpg", turn=6)
    write_plain(folder / "plain.jpg", background="rocket.jpg")
    on_ray = dataclasses.replace(ocr_settings, ray_address="local", **process_backend)
    report = index(on_ray)
    assert (report.added, report.words_read) == (2, 0)
    read = stored_words(on_ray)
    assert substring_distance("raystation", read["ray.jpg"]) <= 1, read
    assert len(read["plain.jpg"]) < 4


def test_another_recogniser_reads_every_photo_again(
    ocr_settings: Settings, shared_embedder: Embedder, tmp_path: Path
) -> None:
    """The ocr-recogniser key (a Japanese user's own graph, say): here the bundled graph with
    its alphabet moved into a dictionary beside it, as PaddleOCR ships its others."""
    import onnx

    from image_search.ocr import RECOGNISER_FILE, engine_name, models_folder

    write_sign(ocr_settings.source_directory / "m.jpg", "MUSEUM SHOP", background="coffee.webp")
    run_index(ocr_settings, shared_embedder)
    model = onnx.load(str(models_folder() / RECOGNISER_FILE))
    alphabet = next(p.value for p in model.metadata_props if p.key == "character")
    del model.metadata_props[:]
    graph = tmp_path / "recognisers" / "my_rec.onnx"
    graph.parent.mkdir()
    onnx.save(model, str(graph))
    graph.with_suffix(".txt").write_text("\n".join(alphabet.splitlines()) + "\n", "utf-8")

    other = dataclasses.replace(ocr_settings, ocr_recogniser=graph)
    report = run_index(other, shared_embedder)
    assert (report.unchanged, report.words_read) == (1, 1)
    with open_store(other) as store, store.database.connection() as conn:
        engines = conn.execute(
            f"SELECT w.engine FROM {other.table_name} t JOIN {WORDS_TABLE} w USING (content_hash)"
        ).fetchall()
    assert engines == [(engine_name(graph),)] and engine_name(graph) != ENGINE
    assert words_search(other, shared_embedder, Query(words="museum")) == ["m.jpg"]

    bare = graph.with_name("bare.onnx")
    shutil.copyfile(graph, bare)
    with pytest.raises(ImageSearchError, match="ocr-recogniser.*bare.txt"):
        TextReader(recogniser=bare).load()


def test_words_with_only_a_part_taken_away_rank_by_its_opposite(
    settings: Settings, shared_embedder: Embedder
) -> None:
    """`--words X --not people`: the one vector part counts negative, as in a sum of parts."""
    from image_search.query import QueryPart

    with open_store(settings) as store:
        searcher = Searcher(settings, store, shared_embedder)
        vector = searcher._vector([QueryPart("text", "people", 1.0, -1)], {}, {}, "- people")
    people = shared_embedder.embed_texts(["people"])[0]
    np.testing.assert_allclose(vector, -people / np.linalg.norm(people), atol=1e-6)
