"""The CPU user's default (issue 17): backend auto, torch as an extra, quick start-up."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import write_config
from imagegen import write_photo
from tiny_models import build_tiny_clip

from image_search.cli import main
from image_search.config import Settings
from image_search.ingest import run_index
from image_search.models import Embedder, base

TORCH_EXTRA_PACKAGES = ("torch", "torchvision", "transformers", "timm", "einops")


def test_the_default_install_has_no_torch_and_the_extra_brings_it() -> None:
    """What README's first command installs (`uv run --no-dev`), read from the lock file."""
    uv = shutil.which("uv")
    assert uv, "uv runs README's commands, so it must be on the PATH"

    def packages(*flags: str) -> set[str]:
        exported = subprocess.run(
            [uv, "export", "--frozen", "--no-hashes", "--no-header", "--no-emit-project", *flags],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        names = (line.split("==")[0].split(" ")[0] for line in exported.splitlines())
        return {name.strip().lower() for name in names if name and not name.startswith("#")}

    default = packages("--no-dev")
    assert "onnxruntime" in default and "gradio" in default
    assert not default & set(TORCH_EXTRA_PACKAGES)
    assert set(TORCH_EXTRA_PACKAGES) <= packages("--no-dev", "--extra", "torch")


def test_torch_without_the_extra_is_one_line_naming_it(
    settings: Settings, photos: list[Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(base, "torch_installed", lambda: False)
    config = write_config(tmp_path / "config.json", settings)
    assert main(["index", "--env", str(config), "--backend", "torch"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "image-search[torch]" in error and "backend torch" in error


def test_exporting_a_model_without_the_extra_is_one_line_naming_it(
    settings: Settings, photos: list[Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    never_exported = build_tiny_clip(tmp_path / "fresh-clip", seed=5)  # in no export cache
    monkeypatch.setattr(base, "torch_installed", lambda: False)
    config = write_config(
        tmp_path / "config.json",
        settings,
        **{"model-name": str(never_exported), "backend": "onnx", "precision": "fp32"},
    )
    assert main(["index", "--env", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert "exporting" in error and "image-search[torch]" in error


def test_a_table_filled_by_torch_is_still_searched_with_the_new_default(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, tmp_path: Path, capsys
) -> None:
    """The previous default was torch fp32; its tables keep being served without --reindex."""
    run_index(settings, shared_embedder)  # settings say torch, as before the change
    config = write_config(tmp_path / "config.json", settings, backend="auto")

    assert main(["search", "--env", str(config), "--image", str(photos[2]), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["results"][0]["file_path"] == str(photos[2])

    assert main(["status", "--env", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["backend_in_use"] == "torch"
    assert "filled with torch fp32" in status["backend_reason"]
    assert status["settings_match_table"] is True


def test_a_new_table_with_the_default_is_filled_by_onnx(
    settings: Settings, photos: list[Path], tmp_path: Path, capsys
) -> None:
    config = write_config(tmp_path / "config.json", settings, backend="auto")
    assert main(["index", "--env", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == len(photos)
    assert main(["status", "--env", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["backend"], status["backend_in_use"]) == ("onnx", "onnx")
    assert status["precision"] == status["precision_in_use"]


START_UP_CHECK = """
import sys
from image_search.cli import main
for argv in ({commands}):
    code = main(["--env", {config!r}, *argv])
    assert code == 0, (argv, code)
heavy = ("torch", "gradio", "onnxruntime", "transformers")
print("imported:", *(module for module in heavy if module in sys.modules))
"""


def test_everyday_commands_import_neither_torch_nor_gradio_nor_onnxruntime(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    """status, duplicates, search --like of an indexed file and a no-op index need no model:
    they must not pay seconds of imports for one (issue 17, start-up)."""
    auto = dataclasses.replace(settings, backend="auto")
    run_index(auto, Embedder.from_settings(auto))  # the export needs torch: done here
    config = write_config(tmp_path / "config.json", auto)
    commands = [
        ["status"],
        ["index"],
        ["search", "--like", str(photos[0])],
        ["duplicates"],
    ]
    script = START_UP_CHECK.format(commands=repr(commands)[1:-1] + ",", config=str(config))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "imported:"


def test_an_unreachable_hub_is_reported_before_the_database_starts(
    settings: Settings, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = tmp_path / "never-started"
    config = write_config(
        tmp_path / "config.json",
        settings,
        **{"model-name": "someone/not-cached-anywhere", "data-directory": str(data)},
    )
    write_photo(settings.source_directory / "a.jpg", seed=1)
    assert main(["index", "--env", str(config)]) == 1
    assert "cannot be reached" in capsys.readouterr().err
    assert not data.exists()  # neither the database nor anything else was started
