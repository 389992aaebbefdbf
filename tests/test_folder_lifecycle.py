"""What a photo folder holds over time, as a user meets it on the command line and the page:
NAS and OS side folders left out, processed JPEGs owned by each table, failed files tried again
when what made them fail changes, and files that vanish (an unmounted share) kept out of
searches but not deleted until their grace period ends.

The fake model (tests/fake_model.py) embeds here: it counts every image it is given, so a test
can tell a file restored without embedding from one embedded again."""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, running_page, write_config
from fake_model import FakeColourModel, fake_embedder, fake_model_settings, solid_photo
from imagegen import write_photo
from PIL import Image

from image_search import cli, failure_cause
from image_search.config import Settings
from image_search.images import processed_path_for
from image_search.store import open_store

_tables = itertools.count(1)
# A photo as Synology Photos leaves it: the photo, and in @eaDir its thumbnails, each a
# smaller copy of it (indexed, they would be near-duplicates of the photo, four times over).
SYNOLOGY_THUMBNAILS = ("SYNOPHOTO_THUMB_SM", "SYNOPHOTO_THUMB_M", "SYNOPHOTO_THUMB_B")
# The model hub is never probed for the fake model's name.
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture
def model() -> FakeColourModel:
    return FakeColourModel()


@pytest.fixture
def library(
    tmp_path: Path, data_directory: Path, model: FakeColourModel, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Settings of a table of its own over tmp_path/photos, for the fake model, which every
    command run by `image_search` below embeds with."""
    monkeypatch.setattr(cli, "make_embedder", lambda settings: fake_embedder(model))
    return fake_model_settings(
        tmp_path, data_directory, f"lifecycle_{next(_tables)}", backend="onnx", precision="fp32"
    )


def image_search(
    settings: Settings, *args: str, env: dict[str, str] | None = None, **keys: object
) -> Any:
    """`image-search ARGS --env CONFIG` with the settings (and `keys`, `_` for `-`) in CONFIG:
    the JSON it printed (for --json), else the whole CompletedProcess."""
    more = {key.replace("_", "-"): value for key, value in keys.items()}
    config = write_config(settings.source_directory.parent / "config.json", settings, **more)
    done = run_cli(*args, "--env", str(config), env={**OFFLINE, **(env or {})})
    if "--json" in args and done.returncode == 0:
        return json.loads(done.stdout)
    return done


def index(
    settings: Settings, *flags: str, env: dict[str, str] | None = None, **keys: object
) -> dict[str, Any]:
    done = image_search(settings, "index", "--json", *flags, env=env, **keys)
    assert isinstance(done, dict), done.stderr
    return done


def stored_paths(settings: Settings) -> set[str]:
    with open_store(settings) as store, store.database.connection() as conn:
        rows = conn.execute(f'SELECT file_path FROM "{settings.table_name}"').fetchall()
    return {path for (path,) in rows}


def processed_of(settings: Settings, photo: Path) -> Path:
    with open_store(settings) as store, store.database.connection() as conn:
        query = f'SELECT processed_path FROM "{settings.table_name}" WHERE file_path = %s'
        return Path(conn.execute(query, [str(photo)]).fetchone()[0])


def backdate_missing(settings: Settings, days: int) -> None:
    """As if the missing files of the table had been found missing `days` days ago."""
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute(
            f'UPDATE "{settings.table_name}" SET missing_since = now() - make_interval(days => %s)'
            " WHERE missing_since IS NOT NULL",
            [days],
        )


# ---------------------------------------------------------------- what a photo folder holds


def synology_photo(folder: Path, name: str, rgb: tuple[int, int, int]) -> Path:
    photo = solid_photo(folder / name, rgb)
    for thumbnail in SYNOLOGY_THUMBNAILS:
        solid_photo(folder / "@eaDir" / name / f"{thumbnail}.jpg", rgb, size=(24, 16))
    return photo


def test_nas_and_os_side_folders_are_left_out_and_the_summary_counts_them(
    library: Settings,
) -> None:
    folder = library.source_directory
    photos = {
        synology_photo(folder, "red.png", (250, 0, 0)),
        synology_photo(folder / "trip", "blue.png", (0, 0, 250)),
        solid_photo(folder / "trip" / "green.png", (0, 250, 0)),
    }
    for side in ("#recycle", "#snapshot/GMT+01_2024-05-01", "$RECYCLE.BIN", "lost+found"):
        solid_photo(folder / side / "old.png", (10, 10, 10))
    solid_photo(folder / "System Volume Information" / "x.png", (20, 20, 20))
    solid_photo(folder / "Private" / "me.png", (30, 30, 30))
    solid_photo(folder / "trip" / "green-edited.png", (0, 240, 0))

    excluding = {"IMAGE_SEARCH_EXCLUDE": "private, *-edited.png"}
    report = index(library, env=excluding)

    assert stored_paths(library) == {str(p) for p in photos}
    assert (report["scanned"], report["added"]) == (3, 3)
    # Two @eaDir, #recycle, #snapshot, $RECYCLE.BIN, lost+found, System Volume Information
    # and Private; green-edited.png.
    assert (report["excluded_folders"], report["excluded_files"]) == (8, 1)
    summary = image_search(library, "index", env=excluding).stdout
    assert "left out 8 folders and 1 images" in summary


def test_exclude_system_folders_false_with_an_exclude_list_replaces_the_built_in_list(
    library: Settings,
) -> None:
    folder = library.source_directory
    red = synology_photo(folder, "red.png", (250, 0, 0))
    recycled = solid_photo(folder / "#recycle" / "old.png", (10, 10, 10))
    thumbnails = {str(p) for p in (folder / "@eaDir").rglob("*.jpg")}

    everything = index(library, "--exclude-system-folders", "false")
    assert stored_paths(library) == {str(red), str(recycled), *thumbnails}
    assert everything["excluded_folders"] == 0

    only_recycle = index(library, "--exclude-system-folders", "false", "--exclude", "#RECYCLE")
    # Rows of files left out on purpose go at once (they are not missing: they are there).
    assert (only_recycle["removed"], only_recycle["missing"]) == (1, 0)
    assert stored_paths(library) == {str(red), *thumbnails}

    default = index(library)
    assert default["removed"] == len(thumbnails)
    assert stored_paths(library) == {str(red)}


def test_a_list_key_is_a_json_list_in_the_file_and_commas_elsewhere(library: Settings) -> None:
    folder = library.source_directory
    kept = solid_photo(folder / "kept.png", (250, 0, 0))
    for name in ("a/x.png", "b/y.png", "c/z.png", "d/c/w.png", "d/a/v.png"):
        solid_photo(folder / name, (0, 0, 250))

    # A name at any depth; a path (with a /, a leading one changing nothing) under the folder.
    report = index(library, exclude=["A", "b/*", "/c"])
    assert (report["excluded_folders"], report["excluded_files"]) == (3, 1)
    assert stored_paths(library) == {str(kept), str(folder / "d" / "c" / "w.png")}
    wrong = image_search(library, "index", exclude="a,b")  # a string in the JSON file
    assert wrong.returncode == 2
    assert "configuration key 'exclude' must be a list of strings" in wrong.stderr


def test_watch_ignores_what_the_scan_leaves_out(library: Settings) -> None:
    from image_search.scan import Exclusions
    from image_search.watch import ChangeRecorder

    root = library.source_directory
    recorder = ChangeRecorder(root, Exclusions.of(library))
    assert recorder._relevant(str(root / "trip" / "red.jpg"), is_directory=False)
    assert not recorder._relevant(str(root / "@eaDir" / "red.jpg" / "T_M.jpg"), False)
    assert not recorder._relevant(str(root / "trip" / "#recycle"), is_directory=True)


# ---------------------------------------------------------------- processed JPEGs per table


def test_two_tables_over_one_folder_keep_their_own_processed_jpegs(
    library: Settings, tmp_path: Path
) -> None:
    folder = library.source_directory
    red = write_photo(folder / "red.jpg", seed=1, width=200, height=100)
    blue = write_photo(folder / "blue.jpg", seed=2, width=200, height=100)
    small = dataclasses.replace(
        library, table_name=f"{library.table_name}_small", resize_width=20, resize_height=20
    )
    index(library)
    index(small)

    assert Image.open(processed_of(library, red)).size == (32, 16)  # not rewritten by `small`
    assert Image.open(processed_of(small, red)).size == (20, 10)
    assert processed_of(library, red) == processed_path_for(library, str(red))

    library_red = processed_of(library, red)
    red.unlink()
    assert index(library, "--prune")["removed"] == 1
    assert not library_red.exists()
    assert processed_of(small, red).is_file()  # still `small`'s, whose row points at it

    # A database indexed by an earlier version: both tables' rows point at one processed
    # JPEG in processed/ itself. Only the removal of the last row that points at it deletes it.
    shared = library.processed_directory / "ab" / "shared-blue.jpg"
    shared.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(processed_of(library, blue), shared)
    for settings in (library, small):
        with open_store(settings) as store, store.database.connection() as conn:
            conn.execute(
                f'UPDATE "{settings.table_name}" SET processed_path = %s WHERE file_path = %s',
                [str(shared), str(blue)],
            )
    blue.unlink()
    assert index(library, "--prune")["removed"] == 1
    assert shared.exists()
    assert index(small, "--prune")["removed"] == 2
    assert not shared.exists()


# ---------------------------------------------------------------- failures and their causes


def test_raising_the_limit_the_message_names_tries_the_file_again(library: Settings) -> None:
    big = write_photo(library.source_directory / "big.jpg", seed=1, width=200, height=100)

    first = index(library, "--max-image-pixels", "10000")
    [failure] = first["failed"]
    assert "--max-image-pixels 20000" in failure["error"]
    same = image_search(library, "index", "--max-image-pixels", "10000")
    assert "unchanged since it failed before" in same.stderr

    raised = index(library, "--max-image-pixels", "20000")
    assert (raised["added"], raised["failed"]) == (1, [])
    assert stored_paths(library) == {str(big)}


def test_new_decoders_try_failed_files_again_and_retry_failed_tries_them_all(
    library: Settings, model: FakeColourModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    solid_photo(library.source_directory / "red.png", (250, 0, 0))
    broken = library.source_directory / "broken.heic"
    broken.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 200)
    index(library)
    again = image_search(library, "index")
    assert "skipped " + str(broken) + " (unchanged since it failed before)" in again.stderr

    retried = image_search(library, "index", "--retry-failed")
    assert f"skipped {broken}: " in retried.stderr
    assert "unchanged since it failed before" not in retried.stderr
    assert "unchanged since it failed before" in image_search(library, "index").stderr

    installed = {**failure_cause.decoder_versions(), "pillow-heif": "99.0"}  # an upgrade
    monkeypatch.setattr(failure_cause, "decoder_versions", lambda: installed)
    upgraded = image_search(library, "index")
    assert f"skipped {broken}: " in upgraded.stderr
    assert "trying again 1 files that failed before" in upgraded.stderr
    assert "unchanged since it failed before" in image_search(library, "index").stderr
    assert model.images_embedded == 1  # the one photo, once


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, bool], None]:
    """`unreadable(path, True)` takes away the permission to read a file, `False` gives it
    back. Root reads a file whatever its mode: for root the file system's refusal is made
    here, for that one path."""
    refused: set[str] = set()
    real_open, real_os_open = builtins.open, os.open

    def check(path: Any) -> None:
        if isinstance(path, str | Path) and os.fspath(path) in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))

    def guarded_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        check(path)
        return real_open(path, *args, **kwargs)

    def guarded_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        check(path)
        return real_os_open(path, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)

    def make(path: Path, refuse: bool) -> None:
        path.chmod(0 if refuse else 0o644)
        if refuse:
            refused.add(str(path))
        else:
            refused.discard(str(path))

    return make


def test_a_file_that_could_not_be_opened_is_tried_again_once_it_can_be(
    library: Settings, model: FakeColourModel, unreadable: Callable[[Path, bool], None]
) -> None:
    photo = solid_photo(library.source_directory / "red.png", (250, 0, 0))
    unreadable(photo, True)

    first = index(library)
    assert [f["error"] for f in first["failed"]] == ["cannot read file: Permission denied"]
    loads = model.loads
    second = image_search(library, "index")
    assert "unchanged since it failed before" in second.stderr
    assert model.loads == loads  # a file that still cannot be opened never loads the model

    unreadable(photo, False)  # the permission fixed: same size, same mtime
    fixed = index(library)
    assert (fixed["added"], fixed["failed"]) == (1, [])


# ---------------------------------------------------------------- vanished is not deleted


def share_library(settings: Settings) -> tuple[Path, list[Path], Path]:
    """A local photo and a share of four (two of them near-identical) mounted at `share`."""
    folder = settings.source_directory
    local = solid_photo(folder / "local.png", (250, 0, 0))
    share = folder / "share"
    on_share = [
        solid_photo(share / "2019" / "blue.png", (0, 0, 250)),
        solid_photo(share / "2019" / "blue-again.png", (0, 0, 248)),
        solid_photo(share / "2020" / "green.png", (0, 250, 0)),
        solid_photo(share / "2020" / "purple.png", (130, 30, 200)),
    ]
    return local, on_share, share


def unmount(share: Path, elsewhere: Path) -> None:
    """The share's files gone from view; its mount point stays, empty."""
    shutil.move(share, elsewhere)
    share.mkdir()


def remount(share: Path, elsewhere: Path) -> None:
    share.rmdir()
    shutil.move(elsewhere, share)  # a rename: sizes and mtimes unchanged


def search_paths(settings: Settings, *query: str) -> set[str]:
    found = image_search(settings, "search", *query, "--top-k", "10", "--json")
    assert isinstance(found, dict), found.stderr
    return {result["file_path"] for result in found["results"]}


def duplicate_groups(settings: Settings) -> list[set[str]]:
    found = image_search(settings, "duplicates", "--threshold", "0.99", "--json")
    return [{f["file_path"] for f in group["files"]} for group in found["groups"]]


def test_an_unmounted_share_is_left_out_of_searches_and_restored_without_embedding(
    library: Settings, model: FakeColourModel, tmp_path: Path
) -> None:
    local, on_share, share = share_library(library)
    index(library)
    everything = {str(local), *map(str, on_share)}
    assert search_paths(library, "--like", str(local)) == everything
    assert duplicate_groups(library) == [{str(on_share[0]), str(on_share[1])}]
    embedded = model.images_embedded

    unmount(share, tmp_path / "unmounted")
    report = index(library)

    assert (report["removed"], report["missing"], report["added"]) == (0, 4, 0)
    assert report["missing_folders"] == [{"path": str(share), "images": 4}]
    summary = image_search(library, "index").stdout
    assert "4 missing, left out of searches" in summary and f"{share} (4)" in summary
    assert search_paths(library, "--like", str(local)) == {str(local)}
    assert search_paths(library, "--text", "blue") == {str(local)}
    assert search_paths(library, "--text", "blue", "--under", str(share)) == set()
    assert duplicate_groups(library) == []
    like_missing = image_search(library, "search", "--like", str(on_share[0]))
    assert like_missing.returncode == 2 and "not indexed" in like_missing.stderr
    status = image_search(library, "status", "--json")
    assert (status["images"], status["missing"]) == (1, 4)
    assert stored_paths(library) == everything  # rows and vectors kept

    remount(share, tmp_path / "unmounted")
    back = index(library)

    assert (back["restored"], back["missing"], back["added"], back["updated"]) == (4, 0, 0, 0)
    assert model.images_embedded == embedded  # nothing embedded again
    assert search_paths(library, "--like", str(local)) == everything
    assert image_search(library, "status", "--json")["images"] == 5


def test_missing_files_are_purged_after_the_grace_period_or_by_prune(
    library: Settings, tmp_path: Path
) -> None:
    local, on_share, share = share_library(library)
    index(library)
    processed = [processed_of(library, photo) for photo in on_share]
    unmount(share, tmp_path / "unmounted")
    index(library)
    backdate_missing(library, days=6)

    assert index(library, missing_grace_days=7)["removed"] == 0
    assert index(library, "--keep-missing", missing_grace_days=5)["removed"] == 0
    purged = index(library, missing_grace_days=5)
    assert (purged["removed"], purged["missing"]) == (4, 0)
    assert stored_paths(library) == {str(local)}
    assert not any(path.exists() for path in processed)

    remount(share, tmp_path / "unmounted")
    index(library)
    on_share[0].unlink()
    assert index(library)["missing"] == 1
    pruned = index(library, "--prune")
    assert (pruned["removed"], pruned["missing"]) == (1, 0)
    both = image_search(library, "index", "--prune", "--keep-missing")
    assert both.returncode == 2 and "--keep-missing" in both.stderr


def test_a_folder_that_looks_empty_is_never_purged_but_by_prune(
    library: Settings, tmp_path: Path
) -> None:
    local, on_share, share = share_library(library)
    index(library)
    everything = library.source_directory
    shutil.move(everything, tmp_path / "away")
    everything.mkdir()  # the whole source folder is an empty mount point
    index(library)
    backdate_missing(library, days=400)

    done = image_search(library, "index")
    assert done.returncode == 0
    assert "no images found" in done.stderr and "keeping its 5 stored images" in done.stderr
    assert len(stored_paths(library)) == 5
    for command in (["search", "--text", "red"], ["duplicates"]):
        refused = image_search(library, *command)
        assert refused.returncode == 1
        assert "all 5 images stored in table" in refused.stderr and "are missing" in refused.stderr
    assert index(library, "--prune")["removed"] == 5


def test_the_pages_rescan_keeps_missing_files_and_find_similar_leaves_them_out(
    library: Settings, model: FakeColourModel, tmp_path: Path
) -> None:
    from gradio_client import Client

    local, on_share, share = share_library(library)
    index(library)
    unmount(share, tmp_path / "unmounted")
    with running_page(library, fake_embedder(model)) as url:
        client = Client(url, verbose=False)
        note, _ = client.predict(api_name="/rescan")
        *_, similar = client.predict(str(local), 10, api_name="/similar")
        with pytest.raises(Exception, match="not indexed"):
            client.predict(str(on_share[2]), 3, api_name="/similar")
    assert "4 missing" in note
    assert {r["file_path"] for r in similar["results"]} == {str(local)}
    assert stored_paths(library) == {str(local), *map(str, on_share)}
