"""Known answers with real pretrained weights, through the real CLI, with each backend (onnx in
int8: jina-clip-v2 through its published model_int8.onnx). Opt-in: it downloads
jinaai/jina-clip-v2 (about 1.7 GB, and 0.9 GB of ONNX) and openai/clip-vit-base-patch32 from
the model hub.

    IMAGE_SEARCH_REAL_MODEL=1 uv run pytest tests/test_real_models.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli_process, write_config

from image_search.config import Settings

pytestmark = pytest.mark.skipif(
    os.environ.get("IMAGE_SEARCH_REAL_MODEL") != "1",
    reason="needs the Hugging Face model hub: set IMAGE_SEARCH_REAL_MODEL=1 to run",
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_IMAGES = sorted(p.name for p in (EXAMPLES / "images").iterdir() if p.suffix != ".md")
# The first run downloads the weights; later runs load them from the cache.
TIMEOUT = 3600

TEXT_ANSWERS = {"a cat": "chelsea.jpg", "an astronaut": "astronaut.jpg"}
MODELS = {
    "jinaai/jina-clip-v2": (1024, {**TEXT_ANSWERS, "宇宙飛行士": "astronaut.jpg"}),
    "openai/clip-vit-base-patch32": (512, TEXT_ANSWERS),
}


RUNS = [(model, backend) for model in MODELS for backend in ("torch", "onnx")]


@pytest.fixture(
    scope="module",
    params=RUNS,
    ids=[f"{model.split('/')[-1]}-{backend}" for model, backend in RUNS],
)
def indexed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, data_directory: Path
) -> tuple[Path, dict[str, str]]:
    """examples/images indexed with one real model and backend into a table of its own."""
    model, backend = request.param
    dimension, answers = MODELS[model]
    folder = tmp_path_factory.mktemp("real")
    settings = Settings(
        source_directory=EXAMPLES / "images",
        output_directory=folder / "output",
        model_name=model,
        dimension=dimension,
        data_directory=data_directory,
        table_name=f"real_{backend}_" + model.split("/")[-1].replace("-", "_").replace(".", "_"),
        backend=backend,
    )
    config = write_config(folder / "config.json", settings)
    done = run_cli_process("index", "--env", str(config), "--json", timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["failed"] == []
    assert report["added"] == len(EXAMPLE_IMAGES)
    return config, answers


def best_match(config: Path, *query: str) -> str:
    done = run_cli_process("search", "--env", str(config), *query, "--json", timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert len(results) == len(EXAMPLE_IMAGES)
    return results[0]["file_name"]


def test_the_query_photo_finds_the_same_cat(indexed: tuple[Path, dict[str, str]]) -> None:
    config, _ = indexed
    assert best_match(config, "--image", str(EXAMPLES / "query.jpg")) == "chelsea.jpg"


def test_texts_find_what_they_describe(indexed: tuple[Path, dict[str, str]]) -> None:
    config, answers = indexed
    found = {text: best_match(config, "--text", text) for text in answers}
    assert found == answers


def test_jina_clip_v2_embeds_tensors_as_its_own_encode_image_does() -> None:
    """The GPU path's tensors take the model's preprocessing from its preprocessor_config.json
    and go to get_image_features; with the real jina-clip-v2 the vectors must be those of its
    own encode_image (Pillow), up to the resize filter's rounding."""
    import numpy as np
    import torch

    from image_search.images import ResizeSpec, prepare_file
    from image_search.models import Embedder

    embedder = Embedder("jinaai/jina-clip-v2", "cpu", 1024)
    spec = ResizeSpec(width=960, height=540, mode="fit", max_pixels=10**8)
    images = [prepare_file(EXAMPLES / "images" / name, spec) for name in EXAMPLE_IMAGES[:3]]
    by_pillow = embedder.embed_images(images)
    tensors = [torch.from_numpy(np.asarray(i).copy()).permute(2, 0, 1) for i in images]
    by_tensor = embedder.embed_images(tensors)
    for ours, theirs in zip(by_tensor, by_pillow, strict=True):
        assert float(ours @ theirs) > 0.99
