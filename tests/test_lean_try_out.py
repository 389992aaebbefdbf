"""README's no-internet try-out stays lean: in a fresh environment made from the lock file as
README's first command makes it (`--no-dev`: no torch, no transformers), the tiny model that
examples/ ships in Immich's layout indexes, searches by image and by text, and `status` shows
it; and where a model would need torch, the message names it and suggests nothing already set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_config

from image_search.cli import main
from image_search.config import Settings
from image_search.models import base

ROOT = Path(__file__).resolve().parent.parent
TRY_OUT_MODEL = ROOT / "examples" / "tiny-immich"
# Done when the environment is still this small after the try-out (README's first command
# installs about 460 MB).
ENVIRONMENT_BUDGET = 512 * 2**20
# The shipped model stays a small part of a clone.
MODEL_BUDGET = 256 * 2**10


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`, each inode once (uv links files from its cache)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            stat = os.lstat(os.path.join(directory, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total


@pytest.mark.slow
def test_the_offline_try_out_runs_in_a_fresh_environment_without_torch(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv, "uv runs README's commands, so it must be on the PATH"
    venv = tmp_path / "venv"
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("IMAGE_SEARCH_", "VIRTUAL_ENV"))
    }
    environment.update(
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_PYTHON_DOWNLOADS="never",
        HF_HUB_OFFLINE="1",  # no model hub: the try-out must not need one
        HF_HOME=str(tmp_path / "hf-home"),
    )
    made = subprocess.run(
        [uv, "sync", "--frozen", "--no-dev", "--python", sys.executable],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    missing = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('transformers'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert missing.stdout.split() == ["None", "None"]

    config = tmp_path / "config.json"
    readme_config = json.loads((ROOT / "config.json").read_text(encoding="utf-8"))
    readme_config["source-directory"] = str(ROOT / "examples" / "images")
    config.write_text(json.dumps(readme_config), encoding="utf-8")
    try_out = ["--env", str(config), "--model-name", str(TRY_OUT_MODEL), "--dimension", "64"]
    try_out += ["--table-name", "tiny"]

    def image_search(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [venv / "bin" / "image-search", *args, *try_out],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        return done

    indexed = json.loads(image_search("index", "--json").stdout)
    photos = sorted(p for p in (ROOT / "examples" / "images").iterdir() if p.suffix != ".md")
    assert indexed["added"] == len(photos) and not indexed["failed"]
    found = json.loads(image_search("search", "--image", str(photos[1]), "--json").stdout)
    assert found["results"][0]["file_path"] == str(photos[1])
    by_text = json.loads(image_search("search", "--text", "a red apple", "--json").stdout)
    assert len(by_text["results"]) == len(photos)
    status = json.loads(image_search("status", "--json").stdout)
    assert (status["model"], status["images"], status["backend"]) == (
        str(TRY_OUT_MODEL),
        len(photos),
        "onnx",
    )
    assert folder_bytes(venv) <= ENVIRONMENT_BUDGET


def test_the_shipped_model_is_small_and_in_immichs_layout() -> None:
    from image_search.models.immich_layout import in_immich_layout, missing_files

    assert in_immich_layout(str(TRY_OUT_MODEL)) and not missing_files(TRY_OUT_MODEL)
    assert folder_bytes(TRY_OUT_MODEL) <= MODEL_BUDGET


def test_a_model_that_needs_torch_names_it_and_suggests_nothing_already_set(
    settings: Settings,
    photos: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    # A Hugging Face CLIP folder in no export cache: its config.json is all that is read
    # before the export is found to need torch.
    never_exported = tmp_path / "fresh-clip"
    never_exported.mkdir()
    (never_exported / "config.json").write_text(json.dumps({"model_type": "clip"}))
    monkeypatch.setattr(base, "torch_installed", lambda: False)
    for backend in ("onnx", "auto"):  # auto is onnx here: no GPU, no torch
        config = write_config(
            tmp_path / "config.json",
            settings,
            **{"model-name": str(never_exported), "backend": backend},
        )
        assert main(["index", "--env", str(config)]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1
        assert str(never_exported) in error and "image-search[torch]" in error
        assert "backend onnx" not in error and "Immich's ONNX layout" in error
