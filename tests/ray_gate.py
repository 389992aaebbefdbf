"""A gate (gate.py) inside the workers of an index run on Ray, for tests that must catch a batch
in a worker's hands: the `at`th batch that reaches the stage (counted over all the job's
workers) holds there, and every batch that reaches it is logged with the worker's process id
and the batch's files, so that a test can see that a killed worker's batch was done again.

Put in place through Ray's own job configuration (`RAY_JOB_CONFIG_JSON_ENV_VAR`, what
`ray job submit` gives a driver): the driver's process gets `environment(...)`, and every
worker of its job runs `install` as it starts."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

from gate import hold

LOG = "batches.jsonl"


def environment(gate: Path, stage: str, at: int) -> dict[str, str]:
    """The variables that put the gate in the workers of the run they are given to; `stage`
    is "prepare" (the CPU tasks) or "embed" (the model's actors)."""
    tests = str(Path(__file__).parent)
    job = {
        "runtime_env": {
            "worker_process_setup_hook": "ray_gate.install",
            "env_vars": {
                "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])),
                "TEST_GATE": str(gate),
                "TEST_GATE_STAGE": stage,
                "TEST_GATE_AT": str(at),
            },
        }
    }
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps(job)}


def batches(gate: Path) -> list[dict[str, Any]]:
    """Every batch that reached the stage: {"pid", "files"}, in order of arrival."""
    log = gate / LOG
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line) for line in lines]


def install() -> None:
    """In each worker, at its start: the stage's code wrapped by the gate."""
    from image_search import cluster

    gate, at = Path(os.environ["TEST_GATE"]), int(os.environ["TEST_GATE_AT"])
    if os.environ["TEST_GATE_STAGE"] == "prepare":
        prepare_batch = cluster.prepare_batch

        def gated_prepare(batch: dict, *args: Any, **kwargs: Any) -> dict:
            arrive(gate, at, [pickle.loads(blob).file.path for blob in batch["item"]])
            return prepare_batch(batch, *args, **kwargs)

        cluster.prepare_batch = gated_prepare
    else:
        embed_and_store = cluster.EmbedAndStore.__call__

        def gated_call(self: Any, batch: dict) -> dict:
            arrive(gate, at, [_path(pickle.loads(blob)) for blob in batch["result"]])
            return embed_and_store(self, batch)

        cluster.EmbedAndStore.__call__ = gated_call  # type: ignore[method-assign]


def arrive(gate: Path, at: int, files: list[str]) -> None:
    """Log this batch; hold it if it is the `at`th (the first worker to see that holds)."""
    line = json.dumps({"pid": os.getpid(), "files": files}) + "\n"
    with open(gate / LOG, "a") as log:  # one short append: whole, whatever else writes
        log.write(line)
    if len(batches(gate)) < at:
        return
    try:
        os.close(os.open(gate / "holding", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return  # held once already
    hold(gate)


def _path(result: Any) -> str:
    return result.path if hasattr(result, "path") else result.item.file.path
