"""Issue 18, the command line and the data a run must survive: a status that agrees with the
default settings, bad dates refused before anything starts, broken files remembered, messages
that say what happened, a pool sized for the page, shadow tables that collide with nothing,
far-future mtimes, changed files that no longer decode, old tables, capture dates in the main
IFD and `--under` through links. Real embedded PostgreSQL, real tiny model, in-process
`main(argv)` calls where the command line is what is tested."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from conftest import free_port, row_count, run_cli, stored_rows, write_config
from imagegen import photo, write_broken_files, write_photo
from PIL import Image

from image_search.config import Settings, load_settings
from image_search.errors import ConfigError, DatabaseError
from image_search.images import capture_time
from image_search.ingest import Progress, run_index, shadow_table_name
from image_search.models import Embedder
from image_search.status import status_of
from image_search.store import Database, Store, VectorSpec, open_store
from image_search.store import connection as connection_module


def fresh_embedder(settings: Settings) -> Embedder:
    """An embedder whose model is not loaded yet: `loaded` tells whether a run needed it."""
    return Embedder(settings.model_name, settings.device, settings.dimension)


def run_main(*argv: str) -> tuple[int, str, str]:
    """`image-search ARGV` in this process: exit code, stdout, stderr."""
    done = run_cli(*argv)
    return done.returncode, done.stdout, done.stderr


# ---------------------------------------------------------------- 7: status


def test_status_with_default_precision_matches_a_table_filled_in_fp32(
    make_settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    settings = make_settings()
    run_index(settings, shared_embedder)  # on the CPU: the table records fp32
    defaults = dataclasses.replace(settings, device="auto", precision="auto")

    with Database(defaults) as database:
        status = status_of(defaults, database)

    assert (status["precision"], status["settings_match_table"]) == ("fp32", True)


def test_status_names_the_tables_backend_beside_the_configured_one_and_the_exact_flags(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    """A table filled by torch fp32, settings asking for onnx: both shown, and the advice
    gives every flag that searches the table, --backend included."""
    run_index(settings, shared_embedder)
    config = write_config(tmp_path / "config.json", settings)

    code, out, err = run_main("status", "--env", str(config), "--backend", "onnx",
                              "--precision", "int8")
    same_code, same, _ = run_main("status", "--env", str(config))

    assert code == 0 and same_code == 0, err
    assert "backend: onnx int8 (set in the configuration); the table's: torch fp32" in out
    note = next(line for line in out.splitlines() if line.startswith("note:"))
    flags = f"--model-name {settings.model_name} --dimension {settings.dimension} --backend torch"
    assert f"ask for {settings.model_name} ({settings.dimension}-d) made by onnx int8, but " in note
    assert note.endswith("made by torch fp32: to use this table, give " + flags
                         + " (or put them in config.json)")
    assert "backend: torch fp32 (set in the configuration); the table's: torch fp32" in same
    assert "note:" not in same
    searched = run_main("search", "--env", str(config), "--like", str(photos[0]),
                        *flags.split()[4:])
    assert searched[0] == 0, searched[2]  # the flags given work


# ---------------------------------------------------------------- 8: bad dates, early


@pytest.mark.parametrize(
    "request_args",
    [
        ["search", "--text", "a cat", "--taken-after", "2024-13"],
        ["search", "--text", "a cat", "--taken-before", "0000"],
        ["search", "--text", "a cat", "--text-weight", "2"],
        ["duplicates", "--threshold", "1.5"],
        ["search", "--image", "no-such-photo.jpg"],
    ],
)
def test_a_bad_request_exits_2_before_the_database_is_reached(
    make_settings, tmp_path: Path, request_args: list[str]
) -> None:
    # Nothing listens on this port: a command that reached for the database would exit 1.
    settings = make_settings(postgres_host="127.0.0.1", postgres_port=free_port())
    config = write_config(tmp_path / "config.json", settings)

    code, out, err = run_main(*request_args, "--env", str(config))

    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "cannot connect" not in err
    assert request_args[-2] in err  # names the option to fix
    assert out == ""


# ---------------------------------------------------------------- 9, 10f: failed files


def test_unchanged_broken_files_are_not_read_again_and_never_load_the_model(
    settings: Settings, photos: list[Path]
) -> None:
    broken = write_broken_files(settings.source_directory / "broken")
    first = run_index(settings, fresh_embedder(settings))
    errors = {f.path: f.error for f in first.failed}
    assert sorted(errors) == sorted(map(str, broken))

    again = fresh_embedder(settings)
    second = run_index(settings, again)

    assert not again.loaded
    assert {f.path: f.error for f in second.failed} == errors  # still listed, same reasons
    assert all(f.remembered for f in second.failed)
    assert second.to_json()["failed"] == first.to_json()["failed"]
    summary = second.summary()
    assert f"{len(broken)} skipped" in summary and "failed" not in summary.split("(")[0]
    assert f"{len(broken)} unchanged since they failed before" in summary

    fixed = write_photo(broken[0], seed=40)  # the file changes: it is tried again
    third = run_index(settings, fresh_embedder(settings))

    assert third.added == 1
    assert sorted(f.path for f in third.failed) == sorted(map(str, broken[1:]))
    broken[1].unlink()
    fourth = run_index(settings, fresh_embedder(settings))
    assert sorted(f.path for f in fourth.failed) == sorted(map(str, broken[2:]))
    assert str(fixed) in {r["file_path"] for r in stored_rows(settings)}


def test_failed_files_follow_a_reindex_and_stay_per_table(
    make_settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    settings = make_settings()
    settings.source_directory.mkdir(parents=True, exist_ok=True)
    broken = write_broken_files(settings.source_directory / "broken")
    run_index(settings, shared_embedder)
    run_index(settings, shared_embedder, reindex=True)

    other = make_settings(table_name=f"{settings.table_name}_other")  # a record of its own
    assert all(not f.remembered for f in run_index(other, shared_embedder).failed)
    again = fresh_embedder(settings)
    report = run_index(settings, again)
    assert not again.loaded
    assert sorted(f.path for f in report.failed if f.remembered) == sorted(map(str, broken))


def test_a_database_from_before_the_failures_table_still_drops_a_stale_table(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    """A database whose meta table predates the failures table: dropping a table made for
    other vectors (a stale re-index, a benchmark's fresh start) must still work."""
    run_index(settings, shared_embedder)
    with open_store(settings) as store:
        store.database.run(lambda conn: conn.execute("DROP TABLE image_search_failures"))
        store.schema.drop_if_other_vectors(VectorSpec("another model", 3))
        assert store.info() is None
    assert run_index(settings, shared_embedder).added == len(photos)


# ---------------------------------------------------------------- 10: messages


def test_the_searched_line_says_the_filters(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    run_index(settings, shared_embedder)
    config = write_config(tmp_path / "config.json", settings)
    empty = tmp_path / "empty-folder"
    empty.mkdir()

    code, out, err = run_main(
        "search", "--env", str(config), "--like", str(photos[0]),
        "--under", str(empty), "--taken-after", "2001",
    )

    assert code == 0, err
    searched = next(line for line in out.splitlines() if line.startswith("Searched"))
    assert f"under {empty}" in searched and "taken from 2001-01-01" in searched
    assert "No stored image passes these filters." in out


@pytest.mark.parametrize("contents", [[], ["notes.txt", "clip.mp4"]])
def test_a_folder_without_images_says_so(
    settings: Settings, shared_embedder: Embedder, caplog, contents: list[str]
) -> None:
    for name in contents:
        (settings.source_directory / name).write_text("not a photo")

    with caplog.at_level(logging.WARNING, logger="image_search"):
        report = run_index(settings, shared_embedder)

    assert report.scanned == 0
    assert f"no images found in {settings.source_directory}" in caplog.text


@pytest.mark.parametrize(
    ("argv", "nearest"),
    [
        (["serch", "--text", "x"], "did you mean search?"),
        (["search", "--imgae", "x.jpg"], "did you mean --image?"),
        (["index", "--sorce", "photos"], "did you mean --source?"),
        (["duplicates", "--treshold=0.9"], "did you mean --threshold?"),
    ],
)
def test_a_mistyped_flag_or_command_suggests_the_nearest(
    argv: list[str], nearest: str
) -> None:
    code, _, err = run_main(*argv)
    assert code == 2
    assert nearest in err.splitlines()[0]


def test_a_photo_over_max_image_pixels_names_the_setting(
    make_settings, shared_embedder: Embedder
) -> None:
    settings = make_settings(max_image_pixels=10_000)
    big = write_photo(settings.source_directory / "big.jpg", seed=1, width=200, height=100)

    report = run_index(settings, shared_embedder)

    [failure] = report.failed
    assert failure.path == str(big)
    assert "max-image-pixels (10000)" in failure.error
    assert "--max-image-pixels 20000" in failure.error  # what would let it in


def test_progress_bars_are_not_written_into_a_log(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, capsys
) -> None:
    report = run_index(settings, shared_embedder, progress=Progress(show_bars=True))

    assert report.added == len(photos)
    err = capsys.readouterr().err  # not a terminal, as a log file or a pipe is not
    assert "\r" not in err and "\x1b[" not in err


# ---------------------------------------------------------------- 11: the pool


def test_the_pool_holds_four_duplicate_searches_at_once(settings: Settings) -> None:
    with Database(settings) as database, ExitStack() as held:
        connections = [held.enter_context(database.connection(timeout=5)) for _ in range(16)]
        assert len({conn.info.backend_pid for conn in connections}) == 16


def test_a_busy_pool_is_not_a_lost_connection(settings: Settings, monkeypatch, caplog) -> None:
    monkeypatch.setattr(connection_module, "POOL_MAX_SIZE", 2)
    monkeypatch.setattr(connection_module, "CONNECT_TIMEOUT_S", 0.5)
    with Database(settings) as database, ExitStack() as held:
        for _ in range(2):
            held.enter_context(database.connection())
        started = time.monotonic()
        with pytest.raises(DatabaseError, match="busy"):
            database.run(lambda conn: conn.execute("SELECT 1").fetchone())
    assert time.monotonic() - started < 5  # answered, not retried for most of a minute
    assert "reconnecting" not in caplog.text


def test_retry_waits_grow(settings: Settings, monkeypatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(connection_module.time, "sleep", waits.append)

    def killed(conn: psycopg.Connection) -> None:  # the server ends the session every time
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        conn.execute("SELECT 1")

    with Database(settings) as database, pytest.raises(DatabaseError, match="lost the connection"):
        database.run(killed)

    assert len(waits) == connection_module.RETRY_ATTEMPTS - 1
    assert all(later > earlier for earlier, later in zip(waits, waits[1:], strict=False))
    assert waits[-1] >= 8 * waits[0]


# ---------------------------------------------------------------- 12: table names


@pytest.mark.parametrize("table", ["image_search_meta", "image_search_failures"])
def test_image_searchs_own_tables_are_no_table_name(table: str) -> None:
    with pytest.raises(ConfigError, match="table-name"):
        load_settings(None, {"table-name": table})


def test_shadow_tables_never_collide() -> None:
    long_a, long_b = "p" * 54 + "_a", "p" * 54 + "_b"
    shadows = {shadow_table_name(name) for name in (long_a, long_b, "photos")}
    assert len(shadows) == 3
    assert shadow_table_name("photos") != "photos_reindex"
    assert all(len(name) <= 63 for name in shadows)
    for name in shadows:  # a shadow's name is one no user may give
        with pytest.raises(ConfigError, match="table-name"):
            load_settings(None, {"table-name": name})


def test_reindex_leaves_a_users_table_named_like_the_old_shadow_alone(
    make_settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    settings = make_settings()
    mine = make_settings(
        table_name=f"{settings.table_name}_reindex", source_directory=tmp_path / "mine"
    )
    write_photo(mine.source_directory / "x.png", seed=30)
    run_index(mine, shared_embedder)
    run_index(settings, shared_embedder)

    run_index(settings, shared_embedder, reindex=True)

    assert [r["file_path"] for r in stored_rows(mine)] == [str(mine.source_directory / "x.png")]
    assert sorted(r["file_path"] for r in stored_rows(settings)) == sorted(map(str, photos))


# ---------------------------------------------------------------- 14, 15: odd data


def test_a_far_future_mtime_is_stored_and_reported_not_fatal(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, caplog
) -> None:
    future = int(datetime(2300, 1, 1).timestamp()) * 10**9
    os.utime(photos[0], ns=(future, future))

    with caplog.at_level(logging.WARNING, logger="image_search"):
        report = run_index(settings, shared_embedder)

    assert (report.added, report.failed) == (len(photos), [])
    assert f"{photos[0]}: its modification time is out of range" in caplog.text
    with open_store(settings) as store:
        stored = store.rows.find(str(photos[0]))
    assert stored is not None and stored.taken_at is not None
    assert datetime.now() < stored.taken_at < datetime(2300, 1, 1)
    assert run_index(settings, shared_embedder).unchanged == len(photos)  # stable, not redone


def test_a_changed_file_that_no_longer_decodes_leaves_the_results(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    run_index(settings, shared_embedder)
    target = photos[0]
    with open_store(settings) as store:
        processed = Path(store.rows.find(str(target)).processed_path)
    assert processed.is_file()
    target.write_bytes(b"not a picture any more")

    report = run_index(settings, shared_embedder)

    assert [f.path for f in report.failed] == [str(target)]
    assert report.removed == 1
    assert str(target) not in {r["file_path"] for r in stored_rows(settings)}
    assert row_count(settings) == len(photos) - 1
    assert not processed.exists()
    with open_store(settings) as store:
        vector = store.rows.find(str(photos[1])).embedding
        assert str(target) not in {m.file_path for m in store.rows.nearest(vector, 10)}


# ---------------------------------------------------------------- 16: older tables


def as_schema_2(settings: Settings) -> None:
    """The table as a release before capture dates left it."""
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute(f'ALTER TABLE "{settings.table_name}" DROP COLUMN taken_at')
        conn.execute(
            "UPDATE image_search_meta SET schema_version = 2 WHERE table_name = %s",
            [settings.table_name],
        )


def test_duplicates_and_find_similar_work_on_a_table_from_before_capture_dates(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    copy = settings.source_directory / "copy-of-red.jpg"
    copy.write_bytes(photos[0].read_bytes())
    run_index(settings, shared_embedder)
    as_schema_2(settings)
    config = write_config(tmp_path / "config.json", settings)

    code, out, err = run_main("duplicates", "--env", str(config), "--json")

    assert code == 0, err
    groups = [{f["file_path"] for f in g["files"]} for g in json.loads(out)["groups"]]
    assert any({str(photos[0]), str(copy)} <= group for group in groups)
    as_schema_2(settings)
    with Database(settings) as database:  # the page's Find similar: a stored row, by path
        assert Store(database, settings.table_name).rows.find(str(photos[1])) is not None


# ---------------------------------------------------------------- 18: dates and folders


def test_date_time_original_is_read_from_the_exif_ifd_then_the_main_one(tmp_path: Path) -> None:
    def jpeg(name: str, main: str | None, sub: str | None) -> Path:
        exif = Image.Exif()
        if main:
            exif[0x9003] = main
        if sub:
            exif.get_ifd(0x8769)[0x9003] = sub
        path = tmp_path / name
        photo(1).save(path, format="JPEG", exif=exif.tobytes())
        return path

    mtime = int(datetime(2020, 1, 1).timestamp() * 1e9)
    main_only = jpeg("main.jpg", "2017:03:04 05:06:07", None)
    both = jpeg("both.jpg", "2017:03:04 05:06:07", "2018:01:02 03:04:05")

    assert capture_time(main_only, mtime) == datetime(2017, 3, 4, 5, 6, 7)
    assert capture_time(both, mtime) == datetime(2018, 1, 2, 3, 4, 5)


def found_under(config: Path, like: Path, under: str) -> set[str]:
    code, out, err = run_main(
        "search", "--env", str(config), "--like", str(like), "--under", under, "--json"
    )
    assert code == 0, err
    return {r["file_path"] for r in json.loads(out)["results"]}


@pytest.mark.parametrize("indexed_through", ["link", "physical"])
def test_under_finds_files_through_a_link_by_physical_path_and_as_dot(
    make_settings, shared_embedder: Embedder, tmp_path: Path, monkeypatch,
    indexed_through: str,
) -> None:
    physical = tmp_path / "disk" / "photos"
    write_photo(physical / "2023" / "a.jpg", seed=1)
    write_photo(physical / "2023" / "b.png", seed=2)
    write_photo(physical / "2024" / "c.jpg", seed=3)
    link = tmp_path / "photos-link"
    link.symlink_to(physical, target_is_directory=True)
    source = link if indexed_through == "link" else physical
    settings = make_settings(source_directory=source, top_k=10, save_results=False)
    run_index(settings, shared_embedder)
    config = write_config(tmp_path / "config.json", settings)
    like = source / "2023" / "a.jpg"
    expected = {str(source / "2023" / "a.jpg"), str(source / "2023" / "b.png")}

    for folder in (link / "2023", physical / "2023"):
        assert found_under(config, like, str(folder)) == expected
    monkeypatch.chdir(link / "2023")
    assert found_under(config, like, ".") == expected


# ---------------------------------------------------------------- 13 (part): Ray workers


def test_ray_workers_are_given_absolute_folders(make_settings, tmp_path: Path, monkeypatch) -> None:
    from image_search.cluster import worker_settings

    monkeypatch.chdir(tmp_path)
    folders = {"source_directory": "photos", "output_directory": "out", "data_directory": "data"}
    settings = make_settings(ray_address="local", **{k: Path(v) for k, v in folders.items()})

    given = worker_settings(settings)  # what the workers receive

    for attribute, folder in folders.items():
        assert getattr(given, attribute) == tmp_path / folder


def test_mtime_dates_are_taken_in_the_zone_of_the_process_that_planned_the_run(
    settings: Settings,
) -> None:
    from image_search.images import ResizeSpec
    from image_search.ingest import plan
    from image_search.pipeline import prepare_item
    from image_search.scan import stat_file

    scan = write_photo(settings.source_directory / "scan.png", seed=3)  # no EXIF: the mtime
    os.utime(scan, (1_700_000_000, 1_700_000_000))  # whole seconds: no rounding to compare
    zone = os.environ.get("TZ")
    try:
        os.environ["TZ"] = "EST5EDT,M3.2.0,M11.1.0"  # the driver's zone
        time.tzset()
        [item], _, _ = plan([stat_file(str(scan))], {})
        expected = datetime.fromtimestamp(scan.stat().st_mtime)
        os.environ["TZ"] = "UTC0"  # a Ray worker in a container
        time.tzset()
        prepared = prepare_item(settings, ResizeSpec.of(settings), item)
    finally:
        if zone is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = zone
        time.tzset()

    assert prepared.taken_at == expected
