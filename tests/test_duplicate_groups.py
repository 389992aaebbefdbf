"""Duplicate groups around the one to keep (issue 20): with a planted chain of photos, each
alike to the next but not to the one two along, every member of a group is at least the
threshold alike to its first file; `--chain` keeps the chain whole. The fake colour model
gives exact vectors, the database is the real one."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, stored_rows, write_config
from fake_model import (
    FakeColourModel,
    colour_vector,
    fake_embedder,
    fake_model_settings,
    solid_photo,
)

from image_search.config import Settings
from image_search.duplicates import DEFAULT_THRESHOLD, find_duplicates
from image_search.ingest import run_index
from image_search.store import open_store

pytestmark = pytest.mark.fast
_tables = itertools.count(1)

# Red to yellow in four steps, largest first: each is at least 0.95 alike to the next, and
# no photo is 0.95 alike to the one two steps along (checked in `chain`).
CHAIN = {
    "a-red.png": ((255, 0, 0), (64, 48)),
    "b-scarlet.png": ((255, 70, 0), (56, 42)),
    "c-orange.png": ((255, 140, 0), (48, 36)),
    "d-amber.png": ((255, 210, 0), (40, 30)),
}


@pytest.fixture
def chain(tmp_path: Path, data_directory: Path) -> Settings:
    settings = fake_model_settings(tmp_path, data_directory, f"dupchain_{next(_tables)}")
    for name, (rgb, size) in CHAIN.items():
        solid_photo(settings.source_directory / name, rgb, size)
    solid_photo(settings.source_directory / "blue.png", (0, 0, 255))  # alike to none
    run_index(settings, fake_embedder(FakeColourModel()))
    vectors = [colour_vector(rgb) for rgb, _ in CHAIN.values()]
    for step in (1, 2):  # the premise: a chain, not a clump
        pairs = zip(vectors, vectors[step:], strict=False)
        alike = [float(a @ b) >= DEFAULT_THRESHOLD for a, b in pairs]
        assert all(alike) if step == 1 else not any(alike)
    return settings


def names(report) -> list[list[str]]:
    return [[Path(m.image.file_path).name for m in group.members] for group in report.groups]


def stored_vectors(settings: Settings) -> dict[str, np.ndarray]:
    return {Path(r["file_path"]).name: r["embedding"] for r in stored_rows(settings)}


def test_every_member_is_alike_to_the_one_to_keep(chain: Settings) -> None:
    with open_store(chain) as store:
        report = find_duplicates(store, DEFAULT_THRESHOLD)
    vectors = stored_vectors(chain)
    for group in report.groups:
        keep = Path(group.members[0].image.file_path).name
        for member in group.members[1:]:
            name = Path(member.image.file_path).name
            expected = float(vectors[name].astype(np.float64) @ vectors[keep])
            assert member.score == pytest.approx(expected, abs=1e-6)
            assert member.score >= DEFAULT_THRESHOLD
    # The largest keeps its neighbour; the rest of the chain is a group of its own.
    assert names(report) == [["a-red.png", "b-scarlet.png"], ["c-orange.png", "d-amber.png"]]


def test_chain_keeps_the_chain_whole(chain: Settings) -> None:
    with open_store(chain) as store:
        report = find_duplicates(store, DEFAULT_THRESHOLD, chain=True)
    assert names(report) == [list(CHAIN)]
    vectors = stored_vectors(chain)
    scores = [m.score for m in report.groups[0].members[1:]]
    keep = vectors["a-red.png"].astype(np.float64)
    assert scores == pytest.approx([float(vectors[n] @ keep) for n in list(CHAIN)[1:]], abs=1e-6)
    assert min(scores) < DEFAULT_THRESHOLD  # what --chain warns of


def test_the_command_line_takes_chain(chain: Settings, tmp_path: Path) -> None:
    config = write_config(tmp_path / "config.json", chain)
    for extra, expected in (((), [2, 2]), (("--chain",), [4])):
        done = run_cli("duplicates", "--env", str(config), "--json", *extra)
        assert done.returncode == 0, done.stderr
        assert [len(g["files"]) for g in json.loads(done.stdout)["groups"]] == expected
