"""A gate where a test meets a run in another process, to catch it mid-batch on any machine
however fast: the run, at the gate, writes its process id to GATE/held and waits until
GATE/open exists; the test waits for `held`, does what it must (kill the run, signal it,
restart the database) and opens the gate, or never does. held_model.py puts a gate in the
model of a run in process, ray_gate.py in the workers of a run on Ray."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

POLL_S = 0.02


def hold(gate: Path) -> None:
    """Wait at `gate` until it is opened, having said so (`held`, written whole)."""
    said = gate / f"held.{os.getpid()}"
    said.write_text(str(os.getpid()))
    said.rename(gate / "held")
    while not (gate / "open").exists():
        time.sleep(POLL_S)


def wait_until_held(
    gate: Path, run: subprocess.Popen | threading.Thread, timeout: float = 120
) -> int:
    """The process id that holds at `gate`, once one does."""
    wait_for(gate / "held", run, timeout)
    return int((gate / "held").read_text())


def wait_for(path: Path, run: subprocess.Popen | threading.Thread, timeout: float = 120) -> None:
    """Until `path` exists; the run (a process of its own or a thread of this one) must not
    end before."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if isinstance(run, threading.Thread):
            assert run.is_alive(), f"the run ended before {path.name} appeared"
        else:
            assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(POLL_S)


def open_gate(gate: Path) -> None:
    (gate / "open").touch()
