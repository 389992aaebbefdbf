"""Immich's ONNX model layout: tiny random models written without torch (tests/tiny_immich.py),
run as Immich runs them, through the command line, without torch, and with Japanese queries and
Japanese file and folder names."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_config
from fake_hardware import hardware
from imagegen import write_photo
from PIL import Image
from tiny_immich import CONTEXT_LENGTH, EMBED_DIM, build_immich_model

from image_search.config import Settings
from image_search.errors import ConfigError, ImageSearchError
from image_search.models import Embedder
from image_search.models.immich_layout import in_immich_layout
from image_search.models.precision import decide

EXPORT_LOGGER = "image_search.models.onnx_export"


@pytest.fixture(scope="session")
def immich_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """open_clip style: the textual graph takes `text`; batch fixed at one, as Immich's are."""
    return build_immich_model(tmp_path_factory.mktemp("models") / "tiny-immich")


@pytest.fixture(scope="session")
def mclip_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """M-CLIP style: `input_ids` + `attention_mask`, a multilingual Unigram tokenizer."""
    folder = tmp_path_factory.mktemp("models") / "tiny-mclip"
    return build_immich_model(folder, multilingual=True, seed=6)


def embedder_for(model: Path, cache: Path, precision: str = "fp32") -> Embedder:
    return Embedder(
        str(model), "cpu", EMBED_DIM, backend="onnx", precision=precision, cache_directory=cache
    )


def some_images(folder: Path, count: int = 5) -> list[Image.Image]:
    paths = [write_photo(folder / f"p{i}.jpg", seed=i) for i in range(count)]
    # One tall and one wide: the shorter side is resized, the centre cropped.
    paths.append(write_photo(folder / "tall.png", seed=11, width=50, height=90))
    paths.append(write_photo(folder / "wide.png", seed=12, width=97, height=41))
    return [Image.open(p).convert("RGB") for p in paths]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# ---------------------------------------------------------------- as Immich runs it


def immich_pixels(image: Image.Image, config: dict) -> np.ndarray:
    """Immich's OpenClipVisualEncoder.transform, written from its source: the shorter side
    resized (int of the ratio times the size), the centre cut at int offsets, /255, then
    (x - mean) / std, channels first."""
    size = config["size"][0] if isinstance(config["size"], list) else config["size"]
    resample = Image.Resampling[config["interpolation"].upper()]
    if image.width < image.height:
        image = image.resize((size, int((image.height / image.width) * size)), resample)
    else:
        image = image.resize((int((image.width / image.height) * size), size), resample)
    left, upper = int(image.width / 2 - size / 2), int(image.height / 2 - size / 2)
    image = image.crop((left, upper, left + size, upper + size))
    array = np.asarray(image, dtype=np.float32) / 255.0
    mean, std = np.array(config["mean"], np.float32), np.array(config["std"], np.float32)
    return ((array - mean) / std).transpose(2, 0, 1)[None]


def immich_text_feed(model: Path, text: str, inputs: list[str]) -> dict[str, np.ndarray]:
    """Immich's OpenClip / MClip textual tokenize: padded and cut to context_length, int32."""
    from tokenizers import Tokenizer

    textual = model / "textual"
    pad = json.loads((textual / "tokenizer_config.json").read_text())["pad_token"]
    tokenizer = Tokenizer.from_file(str(textual / "tokenizer.json"))
    tokenizer.enable_padding(
        length=CONTEXT_LENGTH, pad_token=pad, pad_id=tokenizer.token_to_id(pad)
    )
    tokenizer.enable_truncation(max_length=CONTEXT_LENGTH)
    encoding = tokenizer.encode(" ".join(text.split()))
    if inputs == ["text"]:
        return {"text": np.array([encoding.ids], dtype=np.int32)}
    return {
        "input_ids": np.array([encoding.ids], dtype=np.int32),
        "attention_mask": np.array([encoding.attention_mask], dtype=np.int32),
    }


@pytest.mark.parametrize("variant", ["open_clip", "m-clip"])
def test_vectors_are_the_graphs_outputs_for_immichs_own_preprocessing(
    variant: str, immich_model: Path, mclip_model: Path, tmp_path: Path
) -> None:
    import onnxruntime

    model = immich_model if variant == "open_clip" else mclip_model
    inputs = ["text"] if variant == "open_clip" else ["input_ids", "attention_mask"]
    images = some_images(tmp_path / "photos")
    texts = ["a red apple", "  two   dogs on a beach ", "猫の写真", "x" * 200]
    config = json.loads((model / "visual" / "preprocess_cfg.json").read_text())
    visual = onnxruntime.InferenceSession(str(model / "visual" / "model.onnx"))
    textual = onnxruntime.InferenceSession(str(model / "textual" / "model.onnx"))
    expected_images = np.concatenate(
        [visual.run(None, {"image": immich_pixels(image, config)})[0] for image in images]
    )
    expected_texts = np.concatenate(
        [textual.run(None, immich_text_feed(model, text, inputs))[0] for text in texts]
    )
    embedder = embedder_for(model, tmp_path / "models")
    assert cosines(embedder.embed_images(images), expected_images).min() >= 0.99999
    assert cosines(embedder.embed_texts(texts), expected_texts).min() >= 0.99999


def test_int8_is_made_once_per_tower_when_that_tower_is_used(
    immich_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "models"
    images = some_images(tmp_path / "photos")
    reference = embedder_for(immich_model, cache, "fp32")
    with caplog.at_level(logging.INFO, logger=EXPORT_LOGGER):
        int8 = embedder_for(immich_model, cache, "int8")
        vectors = int8.embed_images(images)
        assert [p.name.split("-")[-1] for p in cache.iterdir() if p.is_dir()] == ["visual"]
        int8.embed_texts(["a cat"])
        embedder_for(immich_model, cache, "int8").embed_texts(["a cat"])  # reused, not made
    made = [r.getMessage() for r in caplog.records if "in int8, once" in r.getMessage()]
    assert len(made) == 2 and "visual" in made[0] and "textual" in made[1]
    assert cosines(vectors, reference.embed_images(images)).min() >= 0.98
    assert not any(cache.glob("*fp32*"))  # fp32 runs the published graphs where they lie


def test_an_int8_graph_the_model_brings_is_used_as_it_is(
    immich_model: Path, tmp_path: Path
) -> None:
    import shutil

    model = shutil.copytree(immich_model, tmp_path / "with-int8")
    # Stand-in for a published int8 graph: a graph of other weights under that name.
    other = build_immich_model(tmp_path / "other", seed=9)
    shutil.copyfile(other / "visual" / "model.onnx", model / "visual" / "model_int8.onnx")
    images = some_images(tmp_path / "photos", 2)
    cache = tmp_path / "models"
    vectors = embedder_for(model, cache, "int8").embed_images(images)
    np.testing.assert_allclose(
        vectors, embedder_for(other, cache, "fp32").embed_images(images), atol=1e-6
    )
    assert not cache.exists()  # nothing was made


@pytest.mark.parametrize("precision_", ["fp32", "int8"])
def test_a_photos_vector_does_not_depend_on_its_batch(precision_: str, tmp_path: Path) -> None:
    """A graph that takes any batch (Immich's older exports): int8 still runs one photo at a
    time (its activations are quantised per input tensor)."""
    model = build_immich_model(tmp_path / "any-batch", batch=None, seed=7)
    embedder = embedder_for(model, tmp_path / "models", precision_)
    photos = some_images(tmp_path / "photos")
    loud = [Image.new("RGB", (40, 40), c) for c in ((255, 255, 255), (0, 0, 0), (255, 0, 255))]
    batch = loud * 3 + [photos[0]] + photos[1:]
    alone = embedder.embed_images([photos[0]])
    assert cosines(alone, embedder.embed_images(batch)[9:10]).min() >= 0.99999
    assert embedder.model()._image.one_at_a_time == (precision_ == "int8")


# ---------------------------------------------------------------- choosing the backend


def test_the_torch_backend_refuses_it_with_one_line(immich_model: Path) -> None:
    from image_search.models import adapter_for, read_model_config

    with pytest.raises(ConfigError) as refused:
        adapter_for(str(immich_model), read_model_config(str(immich_model)), "torch")
    message = str(refused.value)
    assert "Immich's ONNX layout" in message and "backend to onnx" in message
    assert "\n" not in message


def test_auto_runs_it_in_onnx_even_where_torch_would_take_a_gpu(
    immich_model: Path, tiny_clip: Path
) -> None:
    gpu = hardware(nvidia_driver=True, torch_cuda=True, onnx_cuda=True, torch_bf16=True)
    chosen = decide("auto", "auto", "auto", hardware=gpu, model=str(immich_model))
    assert chosen.backend == "onnx" and "Immich" in chosen.reason
    assert decide("auto", "auto", "auto", hardware=gpu, model=str(tiny_clip)).backend == "torch"


def test_a_hub_id_is_recognised_without_a_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert in_immich_layout("immich-app/ViT-B-32__openai")
    assert not in_immich_layout("openai/clip-vit-base-patch32")


def test_a_folder_missing_a_file_is_one_clear_error(immich_model: Path, tmp_path: Path) -> None:
    import shutil

    model = shutil.copytree(immich_model, tmp_path / "broken")
    (model / "textual" / "tokenizer_config.json").unlink()
    with pytest.raises(ImageSearchError) as refused:
        embedder_for(model, tmp_path / "models").embed_texts(["a cat"])
    message = str(refused.value)
    assert "textual/tokenizer_config.json" in message and "\n" not in message


NO_TORCH = """
import sys
from pathlib import Path
sys.modules["torch"] = None          # importing either now fails
sys.modules["transformers"] = None
from PIL import Image
from image_search.models import Embedder
embedder = Embedder(sys.argv[1], "cpu", 64, backend="onnx", precision="int8",
                    cache_directory=Path(sys.argv[2]))
image = Image.new("RGB", (80, 60), (200, 30, 30))
print(embedder.embed_images([image]).shape, embedder.embed_texts(["a red square"]).shape)
"""


def test_int8_is_made_and_run_without_torch_or_transformers(
    mclip_model: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(mclip_model), str(tmp_path / "models")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"(1, {EMBED_DIM}) (1, {EMBED_DIM})" in done.stdout
    assert len([p for p in (tmp_path / "models").iterdir() if p.is_dir()]) == 2


# ---------------------------------------------------------------- the command line


@pytest.fixture
def immich_config(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Callable[[Path, str], tuple[Settings, Path]]:
    def make(model: Path, source: str = "photos") -> tuple[Settings, Path]:
        settings = make_settings(
            model_name=str(model),
            backend="auto",
            precision="auto",
            source_directory=tmp_path / source,
        )
        return settings, write_config(tmp_path / "config.json", settings)

    return make


@pytest.mark.parametrize("variant", ["open_clip", "m-clip"])
def test_the_cli_indexes_searches_and_shows_it(
    variant: str, immich_model: Path, mclip_model: Path, immich_config, tmp_path: Path
) -> None:
    model = immich_model if variant == "open_clip" else mclip_model
    settings, config = immich_config(model)
    photos = [write_photo(settings.source_directory / f"p{i}.jpg", seed=i) for i in range(6)]
    indexed = run_cli("index", "--env", str(config), "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["added"] == len(photos)
    for photo in photos[1:4]:
        found = run_cli("search", "--env", str(config), "--image", str(photo), "--json")
        assert found.returncode == 0, found.stderr
        best = json.loads(found.stdout)["results"][0]
        assert best["file_path"] == str(photo) and best["score"] > 0.9999
    by_text = run_cli("search", "--env", str(config), "--text", "a red apple", "--json")
    assert by_text.returncode == 0, by_text.stderr
    assert len(json.loads(by_text.stdout)["results"]) == settings.top_k
    status = json.loads(run_cli("status", "--env", str(config), "--json").stdout)
    assert status["model"] == str(model) and status["images"] == len(photos)
    assert (status["backend"], status["precision"], status["dimension"]) == (
        "onnx",
        "int8",
        EMBED_DIM,
    )
    shown = run_cli("status", "--env", str(config)).stdout
    assert str(model) in shown


def test_japanese_queries_and_names_work_end_to_end(
    mclip_model: Path, immich_config, tmp_path: Path
) -> None:
    from tokenizers import Tokenizer

    settings, config = immich_config(mclip_model, source="写真")
    cat = write_photo(settings.source_directory / "旅行" / "猫.jpg", seed=3)
    indexed = run_cli("index", "--env", str(config), "--json")
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["added"] == 1

    found = run_cli("search", "--env", str(config), "--text", "猫の写真", "--json")
    assert found.returncode == 0, found.stderr
    assert "写真/旅行/猫.jpg" in found.stdout  # JSON that carries the names as they are
    answer = json.loads(found.stdout)
    (best,) = answer["results"]
    assert (best["file_name"], best["file_path"]) == ("猫.jpg", str(cat))
    folder = Path(answer["output_dir"])
    assert (folder / "猫.jpg").read_bytes() == cat.read_bytes()
    ranked = [
        json.loads(line) for line in (folder / "results.jsonl").read_text("utf-8").splitlines()
    ]
    assert ranked[0]["file_path"] == str(cat)
    assert "猫の写真" in (folder / "query.txt").read_text(encoding="utf-8")

    shown = run_cli("search", "--env", str(config), "--image", str(cat))
    assert shown.returncode == 0, shown.stderr
    assert "写真/旅行/猫.jpg" in shown.stdout

    # The query was read as Japanese, not as unknown tokens: each word has its own vector.
    tokenizer = Tokenizer.from_file(str(mclip_model / "textual" / "tokenizer.json"))
    assert tokenizer.token_to_id("<unk>") not in tokenizer.encode("猫の写真 犬の写真").ids
    cat_text, dog_text = embedder_for(mclip_model, tmp_path / "models").embed_texts(
        ["猫の写真", "犬の写真"]
    )
    assert float(cat_text @ dog_text) < 0.999


def test_the_text_tower_opens_without_laying_out_its_weights_first(
    immich_model: Path, tmp_path: Path
) -> None:
    """A text tower is opened for each command-line query; prepacking its int8 weights costs
    more when it opens than it saves on one query. The image tower, run per photo, keeps it."""
    loaded = embedder_for(immich_model, tmp_path / "models", "int8").model()

    def prepacking_disabled(tower) -> bool:
        options = tower.session().get_session_options()
        try:
            return options.get_session_config_entry("session.disable_prepacking") == "1"
        except RuntimeError:  # not set: ONNX Runtime's default, prepacking
            return False

    assert prepacking_disabled(loaded._text)
    assert not prepacking_disabled(loaded._image)
