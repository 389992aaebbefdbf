"""The model registry: which adapter serves a model, decided from config.json as plain data,
and remote code run only where the configuration allows it. Fast: no database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from imagegen import write_photo
from PIL import Image
from tiny_models import EMBEDDING_DIM, build_remote_code_model

from image_search.cli import make_embedder
from image_search.config import Settings, load_settings
from image_search.errors import ConfigError, ImageSearchError
from image_search.models import Embedder, adapter_for, load_model, read_model_config
from image_search.models.hf_clip import HuggingFaceClip
from image_search.models.precision import Decision, decide
from image_search.models.remote_code import RemoteCodeModel

# Imported by transformers only if something runs the model's own configuration code.
MARKER_MODULE = """
from pathlib import Path

Path({marker!r}).write_text("the model's remote code ran")
raise RuntimeError("remote code ran")
"""


@pytest.fixture
def marked_remote_model(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny remote-code model whose auto_map also names a configuration module that
    leaves a marker file (and fails) when it is imported."""
    folder = build_remote_code_model(tmp_path / "marked-remote")
    marker = tmp_path / "remote-code-ran"
    (folder / "configuration_marker.py").write_text(MARKER_MODULE.format(marker=str(marker)))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"]["AutoConfig"] = "configuration_marker.MarkerConfig"
    config_path.write_text(json.dumps(config))
    return folder, marker


def write_model_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_clip_folder_is_served_by_huggingface_clip(tiny_clip: Path) -> None:
    assert adapter_for(str(tiny_clip), read_model_config(str(tiny_clip))) is HuggingFaceClip


def test_a_folder_with_its_own_code_is_served_by_remote_code_model(
    remote_code_model: Path,
) -> None:
    config = read_model_config(str(remote_code_model))
    assert config["model_type"] == "clip"  # its own AutoModel wins over the standard type
    assert adapter_for(str(remote_code_model), config) is RemoteCodeModel


@pytest.mark.parametrize(
    ("config", "adapter"),
    [
        ({"model_type": "siglip"}, HuggingFaceClip),
        ({"model_type": "siglip2"}, HuggingFaceClip),
        ({"model_type": "chinese_clip"}, HuggingFaceClip),
        ({"model_type": "altclip"}, HuggingFaceClip),
        (
            {
                "model_type": "jina_clip",
                "auto_map": {
                    "AutoConfig": "jinaai/jina-clip-implementation--configuration_clip.X",
                    "AutoModel": "jinaai/jina-clip-implementation--modeling_clip.Y",
                },
            },
            RemoteCodeModel,
        ),
        # Its own config class only: transformers' CLIPModel still loads it, no remote code.
        ({"model_type": "clip", "auto_map": {"AutoConfig": "configuration_x.X"}}, HuggingFaceClip),
    ],
)
def test_the_first_adapter_that_serves_a_config_is_chosen(config: dict, adapter: type) -> None:
    assert adapter_for("some/model", config) is adapter


@pytest.mark.parametrize(("config", "shown"), [({"model_type": "bert"}, "bert"), ({}, "(none)")])
def test_a_model_no_adapter_serves_is_one_clear_error(
    tmp_path: Path, config: dict, shown: str
) -> None:
    folder = write_model_config(tmp_path / "text-only", config)
    with pytest.raises(ImageSearchError) as refused:
        load_model(str(folder), "cpu")
    message = str(refused.value)
    assert f"model type '{shown}'" in message
    assert "model-name" in message
    assert "\n" not in message
    assert not isinstance(refused.value, ConfigError)  # a model that cannot load: exit 1


def test_remote_code_is_refused_when_trust_remote_code_is_false(remote_code_model: Path) -> None:
    embedder = Embedder(str(remote_code_model), "cpu", EMBEDDING_DIM, trust_remote_code=False)
    with pytest.raises(ConfigError) as refused:
        embedder.embed_texts(["a cat"])
    message = str(refused.value)
    assert "'trust-remote-code'" in message
    assert str(remote_code_model) in message
    assert "\n" not in message
    assert not embedder.loaded


def decided(settings: Settings) -> Decision:
    return decide(settings.backend, settings.precision, settings.device)


def test_the_key_reaches_the_embedder_the_cli_builds(
    tmp_path: Path, remote_code_model: Path, tiny_clip: Path
) -> None:
    config = tmp_path / "config.json"
    # The key is about the torch backend's loading (onnx runs published graphs, no code).
    config.write_text(json.dumps({"device": "cpu", "dimension": EMBEDDING_DIM, "backend": "torch"}))
    refusing = load_settings(
        config, {"model-name": str(remote_code_model), "trust-remote-code": "false"}, environ={}
    )
    with pytest.raises(ConfigError, match="trust-remote-code"):
        make_embedder(refusing, decided(refusing)).embed_texts(["a cat"])
    # The key is about code a model brings: a standard CLIP loads without it.
    standard = load_settings(
        config, {"model-name": str(tiny_clip), "trust-remote-code": "false"}, environ={}
    )
    embedder = make_embedder(standard, decided(standard))
    assert embedder.embed_texts(["a cat"]).shape == (1, EMBEDDING_DIM)
    assert type(embedder.model()) is HuggingFaceClip


def test_from_settings_carries_every_value(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model-name": "m", "device": "cpu", "dimension": 32}))
    settings = load_settings(config, {"trust-remote-code": "no"}, environ={})
    embedder = Embedder.from_settings(settings)
    assert (embedder.model_name, embedder.device, embedder.dimension) == ("m", "cpu", 32)
    assert embedder.trust_remote_code is False
    assert not embedder.loaded


def test_deciding_the_adapter_runs_none_of_the_models_code(
    marked_remote_model: tuple[Path, Path],
) -> None:
    folder, marker = marked_remote_model
    assert adapter_for(str(folder), read_model_config(str(folder))) is RemoteCodeModel
    with pytest.raises(ConfigError, match="trust-remote-code"):
        load_model(str(folder), "cpu", trust_remote_code=False)
    assert not marker.exists()

    # The marker does catch code that runs: reading the config the way the old check did
    # (AutoConfig with trust_remote_code=True) imports the module.
    from transformers import AutoConfig

    with pytest.raises(RuntimeError, match="remote code ran"):
        AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    assert marker.exists()


def test_trust_remote_code_is_passed_only_to_models_with_their_own_code(
    monkeypatch: pytest.MonkeyPatch, tiny_clip: Path, remote_code_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoModel

    calls: dict[str, dict] = {}
    real = AutoModel.from_pretrained

    def recording(name, *args, **kwargs):
        calls[str(name)] = kwargs
        return real(name, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", recording)
    photo = write_photo(tmp_path / "photo.jpg", seed=3)
    for folder, adapter in ((tiny_clip, HuggingFaceClip), (remote_code_model, RemoteCodeModel)):
        model = load_model(str(folder), "cpu", trust_remote_code=True)
        assert type(model) is adapter
        with Image.open(photo) as image:
            vectors = model.embed_images([image.convert("RGB")])
        assert vectors.shape == (1, EMBEDDING_DIM) and np.isfinite(vectors).all()
    assert not calls[str(tiny_clip)].get("trust_remote_code")
    assert calls[str(remote_code_model)].get("trust_remote_code") is True
