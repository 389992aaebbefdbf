"""The index run and its executors (executor.py): the run never reaches the Ray executor, a
run with ray-address set is never quietly done in process, and what a Ray actor's batch
tells its Recorder reaches the run as it was told."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from fake_model import FakeColourModel, fake_embedder
from test_imports import import_graph, reachable

from image_search.config import Settings
from image_search.errors import DatabaseError
from image_search.executor import Recorder, Stored
from image_search.ingest import run_index
from image_search.pipeline import Failure

pytestmark = pytest.mark.fast



def reachable_from(start: str) -> set[str]:
    """The modules `start` reaches, imports inside functions included (test_imports' graph)."""
    return reachable(import_graph(), start)


def test_the_index_run_and_the_ray_executor_never_import_each_other() -> None:
    assert "image_search.cluster" not in reachable_from("image_search.ingest")
    assert "image_search.ingest" not in reachable_from("image_search.cluster")
    assert "image_search.cluster" in reachable_from("image_search.executor_choice")  # the chooser


def test_a_ray_address_without_its_executor_is_refused(tmp_path: Path) -> None:
    on_ray = Settings(
        source_directory=tmp_path, data_directory=tmp_path / "data", ray_address="local"
    )

    with pytest.raises(ValueError, match="executor_for"):
        run_index(on_ray, fake_embedder(FakeColourModel()))

    assert not (tmp_path / "data").exists()  # refused before any database was opened


def tell(tally: Recorder) -> None:
    tally.passed(Failure("/photos/broken.jpg", "cannot identify image file"))
    tally.prepared(3)
    tally.embedded(3, 2, 0.5)
    tally.stored(Stored(added=2, updated=1))


def test_a_recorder_replays_what_its_batch_told_then_raises_its_error() -> None:
    recorder, direct, replayed = Recorder(), Recorder(), Recorder()  # the last two: any Tally
    tell(recorder)
    tell(direct)
    recorder.error = DatabaseError("lost the connection to the database")

    travelled = pickle.loads(pickle.dumps(recorder))  # as it comes back from a Ray actor
    with pytest.raises(DatabaseError, match="^lost the connection to the database$"):
        travelled.replay(replayed)

    assert replayed.told == direct.told and replayed.told
