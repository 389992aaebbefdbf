"""The onnx backend with tiny real models: the export cache, int8 on the CPU, one vector per photo
whatever its batch, jina-clip-v2's published layout, and that a table never mixes vectors of
another backend or int8."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_ranked_as, ranking_by_vectors, stored_rows
from imagegen import write_photo
from PIL import Image
from tiny_models import EMBEDDING_DIM, IMAGE_SIZE, OPENAI_MEAN, OPENAI_STD, build_tiny_clip

from image_search.config import Settings
from image_search.errors import ConfigError, ImageSearchError
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.models.onnx_published import QUERY_INSTRUCTION
from image_search.search import Searcher
from image_search.status import status_of
from image_search.store import Database, open_store

EXPORT_LOGGER = "image_search.models.onnx_export"


def onnx_embedder(
    model: Path, cache: Path, precision: str = "fp32", device: str = "cpu", **kwargs
) -> Embedder:
    return Embedder(
        str(model),
        device,
        EMBEDDING_DIM,
        backend="onnx",
        precision=precision,
        cache_directory=cache,
        **kwargs,
    )


def some_images(folder: Path, count: int = 6) -> list[Image.Image]:
    paths = [write_photo(folder / f"p{i}.jpg", seed=i) for i in range(count)]
    return [Image.open(p).convert("RGB") for p in paths]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)  # both are unit vectors


def exports_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        "ONNX" in r.getMessage() and "once" in r.getMessage()
        for r in caplog.records
        if r.name == EXPORT_LOGGER
    )


# ---------------------------------------------------------------- the export cache


def test_the_export_is_made_once_and_reused(
    tiny_clip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "models"
    images = some_images(tmp_path / "photos")
    with caplog.at_level(logging.INFO, logger=EXPORT_LOGGER):
        first = onnx_embedder(tiny_clip, cache).embed_images(images)
        second = onnx_embedder(tiny_clip, cache).embed_images(images)
    assert exports_logged(caplog) == 1
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    assert (entry / "manifest.json").is_file()
    np.testing.assert_array_equal(first, second)


def test_another_precision_or_changed_model_files_make_a_new_entry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = build_tiny_clip(tmp_path / "model", seed=3)
    cache = tmp_path / "models"
    images = some_images(tmp_path / "photos")
    with caplog.at_level(logging.INFO, logger=EXPORT_LOGGER):
        before = onnx_embedder(model, cache, "fp32").embed_images(images)
        onnx_embedder(model, cache, "int8").embed_images(images)
        assert exports_logged(caplog) == 2
        build_tiny_clip(model, seed=4)  # the same folder, other weights
        after = onnx_embedder(model, cache, "fp32").embed_images(images)
    assert exports_logged(caplog) == 3
    entries = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert len(entries) == 3
    assert sum(name.endswith("-int8-opset17") for name in entries) == 1
    assert cosines(before, after).mean() < 0.9  # the new weights were used, not the old export


def test_a_killed_export_is_never_taken_for_a_finished_one(tiny_clip: Path, tmp_path: Path) -> None:
    cache = tmp_path / "models"
    embedder = onnx_embedder(tiny_clip, cache)
    embedder.embed_texts(["a cat"])
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    (entry / "manifest.json").unlink()  # as if the export had died before its last write
    (entry / "image.onnx").write_bytes(b"half a graph")
    vectors = onnx_embedder(tiny_clip, cache).embed_images(some_images(tmp_path / "photos", 2))
    assert vectors.shape == (2, EMBEDDING_DIM)
    assert (entry / "manifest.json").is_file()


# ---------------------------------------------------------------- precisions on the CPU


def test_onnx_fp32_and_int8_agree_with_torch_fp32(
    tiny_clip: Path, model_cache: Path, shared_embedder: Embedder, tmp_path: Path
) -> None:
    images = some_images(tmp_path / "photos")
    texts = ["a red apple", "a photo of two dogs on a long sunny beach"]
    reference = shared_embedder.embed_images(images), shared_embedder.embed_texts(texts)
    for precision, floor in (("fp32", 0.9999), ("int8", 0.98)):
        embedder = onnx_embedder(tiny_clip, model_cache, precision)
        assert cosines(embedder.embed_images(images), reference[0]).min() >= floor
        assert cosines(embedder.embed_texts(texts), reference[1]).min() >= floor


def test_auto_is_int8_on_the_cpu_with_onnx_and_fp32_with_torch(tiny_clip: Path) -> None:
    assert onnx_embedder(tiny_clip, Path("unused"), "auto").resolved_precision == "int8"
    assert Embedder(str(tiny_clip), "cpu", EMBEDDING_DIM).resolved_precision == "fp32"


def test_torch_bf16_vectors_agree_with_fp32(
    tiny_clip: Path, remote_code_model: Path, shared_embedder: Embedder, tmp_path: Path
) -> None:
    images = some_images(tmp_path / "photos")
    texts = ["a red apple", "赤いりんご"]
    bf16 = Embedder(str(tiny_clip), "cpu", EMBEDDING_DIM, precision="bf16")
    assert bf16.embed_images(images).dtype == np.float32  # vectors leave the model as float32
    assert cosines(bf16.embed_images(images), shared_embedder.embed_images(images)).min() >= 0.99
    assert cosines(bf16.embed_texts(texts), shared_embedder.embed_texts(texts)).min() >= 0.99
    # A model that brings its own code runs its matrix products in bf16 through autocast.
    fp32 = Embedder(str(remote_code_model), "cpu", EMBEDDING_DIM, precision="fp32")
    remote = Embedder(str(remote_code_model), "cpu", EMBEDDING_DIM, precision="bf16")
    assert cosines(remote.embed_images(images), fp32.embed_images(images)).min() >= 0.99


# ---------------------------------------------------------------- one vector per photo

# Every way the CPU runs a model: backend, precision, model (exported CLIP or jina's layout).
CPU_RUNS = {
    "torch-fp32": ("torch", "fp32", "tiny-clip"),
    "torch-bf16": ("torch", "bf16", "tiny-clip"),
    "onnx-fp32": ("onnx", "fp32", "tiny-clip"),
    "onnx-int8": ("onnx", "int8", "tiny-clip"),
    "jina-layout-fp32": ("onnx", "fp32", "tiny-jina-layout"),
    "jina-layout-int8": ("onnx", "int8", "tiny-jina-layout"),
}


def loud_images() -> list[Image.Image]:
    """Images whose activations reach further than a photo's: flat white and black, pixel-fine
    checkerboards, full-range noise. A scale computed over a batch holding them is theirs, not
    the photo's (int8's dynamic quantisation), whatever the CPU."""
    checker = (np.indices((120, 160)).sum(axis=0) % 2 * 255).astype(np.uint8)
    noise = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    return [
        Image.new("RGB", (160, 120), (255, 255, 255)),
        Image.new("RGB", (160, 120), (0, 0, 0)),
        Image.fromarray(checker).convert("RGB"),
        Image.fromarray(noise, "RGB"),
        Image.new("RGB", (160, 120), (255, 0, 255)),
    ]


@pytest.mark.parametrize("run", list(CPU_RUNS))
def test_a_photos_vector_does_not_depend_on_its_batch(
    run: str, tiny_clip: Path, jina_layout_model: Path, model_cache: Path, tmp_path: Path
) -> None:
    backend, precision, model = CPU_RUNS[run]
    folder = tiny_clip if model == "tiny-clip" else jina_layout_model
    embedder = Embedder(
        str(folder),
        "cpu",
        EMBEDDING_DIM,
        backend=backend,
        precision=precision,
        cache_directory=model_cache,
    )
    photos = some_images(tmp_path / "photos", 6)
    others = loud_images() * 2 + photos[1:]  # 15 others, the louder ones first
    batch = others[:8] + [photos[0]] + others[8:]
    assert len(batch) == 16
    alone = embedder.embed_images([photos[0]])
    in_batch = embedder.embed_images(batch)[8:9]
    assert cosines(alone, in_batch).min() >= 0.99999


# ---------------------------------------------------------------- jina-clip-v2's layout


def reference_pixels(images: list[Image.Image]) -> np.ndarray:
    """jina-clip's own preprocessing (open_clip's transform, in torchvision)."""
    import torch
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.Resize(IMAGE_SIZE, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(IMAGE_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )
    return torch.stack([transform(image) for image in images]).numpy()


def test_the_jina_layout_runs_its_published_graph_as_its_model_card_says(
    jina_layout_model: Path, model_cache: Path, tmp_path: Path
) -> None:
    """Vectors equal the published graph's own outputs for inputs made by jina-clip's
    preprocessing and transformers' tokenizer, the query carrying its instruction."""
    import onnxruntime
    from transformers import PreTrainedTokenizerFast

    images = some_images(tmp_path / "photos")
    texts = ["a red apple", "赤いりんご", "x"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(jina_layout_model / "tokenizer.json"), pad_token="<pad>"
    )
    ids = tokenizer([QUERY_INSTRUCTION + t for t in texts], padding=True, return_tensors="np")
    graph = onnxruntime.InferenceSession(str(jina_layout_model / "onnx" / "model.onnx"))
    expected_texts, expected_images = graph.run(
        ["l2norm_text_embeddings", "l2norm_image_embeddings"],
        {"input_ids": ids["input_ids"], "pixel_values": reference_pixels(images)},
    )
    embedder = onnx_embedder(jina_layout_model, model_cache, "fp32", trust_remote_code=False)
    assert cosines(embedder.embed_images(images), expected_images).min() >= 0.99999
    assert cosines(embedder.embed_texts(texts), expected_texts).min() >= 0.99999
    int8 = onnx_embedder(jina_layout_model, model_cache, "int8")
    assert cosines(int8.embed_images(images), expected_images).mean() >= 0.98


def test_a_precision_the_repository_does_not_publish_is_one_clear_error(
    jina_layout_model: Path, tmp_path: Path
) -> None:
    model = tmp_path / "no-int8"
    (model / "onnx").mkdir(parents=True)
    for path in jina_layout_model.rglob("*"):
        if path.is_file() and path.name != "model_int8.onnx":
            target = model / path.relative_to(jina_layout_model)
            target.write_bytes(path.read_bytes())
    with pytest.raises(ImageSearchError) as refused:
        onnx_embedder(model, tmp_path / "models", "int8").embed_texts(["a cat"])
    message = str(refused.value)
    assert "precision int8" in message and "onnx/model_int8.onnx" in message
    assert "\n" not in message


NO_TORCH = """
import sys
from pathlib import Path
sys.modules["torch"] = None          # importing either now fails
sys.modules["transformers"] = None
from PIL import Image
from image_search.models import Embedder
embedder = Embedder(sys.argv[1], "cpu", 64, backend="onnx", precision=sys.argv[3],
                    cache_directory=Path(sys.argv[2]))
image = Image.new("RGB", (80, 60), (200, 30, 30))
print(embedder.embed_images([image]).shape, embedder.embed_texts(["a red square"]).shape)
"""


@pytest.mark.parametrize("model", ["jina-layout", "exported-clip"])
def test_running_an_onnx_model_needs_neither_torch_nor_transformers(
    model: str, jina_layout_model: Path, tiny_clip: Path, model_cache: Path
) -> None:
    folder = jina_layout_model if model == "jina-layout" else tiny_clip
    onnx_embedder(folder, model_cache, "int8").embed_texts(["export it here, with torch"])
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(folder), str(model_cache), "int8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"(1, {EMBEDDING_DIM}) (1, {EMBEDDING_DIM})" in done.stdout


# ---------------------------------------------------------------- what a table holds


def onnx_settings(make_settings, model: Path, precision: str = "int8") -> Settings:
    return make_settings(model_name=str(model), backend="onnx", precision=precision)


def test_a_table_refuses_vectors_of_another_backend_or_of_int8(
    settings: Settings, photos: list[Path], shared_embedder: Embedder, model_cache: Path
) -> None:
    run_index(settings, shared_embedder)
    for change in (
        {"backend": "onnx", "precision": "fp32"},
        {"backend": "onnx", "precision": "int8"},
    ):
        other = dataclasses.replace(settings, **change)
        embedder = Embedder.from_settings(other)
        with pytest.raises(ConfigError, match="--table-name") as refused:
            run_index(other, embedder)
        message = str(refused.value)
        assert "--reindex" in message and "made by torch fp32" in message
        assert f"made by onnx {change['precision']}" in message
        with open_store(other) as store, pytest.raises(ConfigError, match="--reindex"):
            Searcher(other, store, embedder).by_image(photos[0])
        assert not embedder.loaded


def test_int8_and_float_onnx_vectors_do_not_share_a_table(
    make_settings, photos: list[Path], tiny_clip: Path, model_cache: Path
) -> None:
    int8 = onnx_settings(make_settings, tiny_clip, "int8")
    run_index(int8, onnx_embedder(tiny_clip, model_cache, "int8"))
    fp32 = dataclasses.replace(int8, precision="fp32")
    with pytest.raises(ConfigError, match="made by onnx int8"):
        run_index(fp32, onnx_embedder(tiny_clip, model_cache, "fp32"))


def test_float_precisions_share_a_table_and_it_remembers_the_first(
    settings: Settings, photos: list[Path], tiny_clip: Path
) -> None:
    bf16 = dataclasses.replace(settings, precision="bf16")
    run_index(bf16, Embedder.from_settings(bf16))
    fp32 = dataclasses.replace(settings, precision="fp32")
    extra = write_photo(settings.source_directory / "late.png", seed=40)
    report = run_index(fp32, Embedder.from_settings(fp32))  # bf16 on a GPU, fp32 later: fine
    assert report.added == 1
    assert len(stored_rows(settings)) == len(photos) + 1
    with open_store(fp32) as store:
        result = Searcher(fp32, store, Embedder.from_settings(fp32)).by_image(extra)
        assert result.results[0].file_path == str(extra)
    with Database(settings) as database:
        status = status_of(settings, database)
    assert (status["backend"], status["precision"]) == ("torch", "bf16")


def test_the_meta_table_records_backend_and_precision(
    make_settings, photos: list[Path], tiny_clip: Path, model_cache: Path
) -> None:
    settings = onnx_settings(make_settings, tiny_clip, "auto")
    run_index(settings, onnx_embedder(tiny_clip, model_cache, "auto"))
    with Database(settings) as database:
        status = status_of(settings, database)
    assert (status["backend"], status["precision"]) == ("onnx", "int8")  # auto, resolved


def test_a_table_from_before_backends_counts_as_torch_fp32(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    run_index(settings, shared_embedder)
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute(
            "UPDATE image_search_meta SET backend = NULL, precision = NULL WHERE table_name = %s",
            [settings.table_name],
        )
    with open_store(settings) as store:
        info = store.info()
        assert (info.spec.backend, info.spec.precision) == ("torch", "fp32")
    report = run_index(settings, shared_embedder)  # the same vectors: accepted
    assert report.unchanged == len(photos)
    onnx = dataclasses.replace(settings, backend="onnx", precision="fp32")
    with pytest.raises(ConfigError, match="made by torch fp32"):
        run_index(onnx, Embedder.from_settings(onnx))


def test_a_meta_table_without_the_columns_is_read_and_upgraded(
    settings: Settings, photos: list[Path], shared_embedder: Embedder
) -> None:
    """A database last written by a version before backends: reading it (status, search)
    writes nothing, and the next index run adds the columns."""
    run_index(settings, shared_embedder)
    with open_store(settings) as store, store.database.connection() as conn:
        conn.execute("ALTER TABLE image_search_meta DROP COLUMN backend, DROP COLUMN precision")
    with open_store(settings) as store:
        info = store.info()
        assert (info.spec.backend, info.spec.precision, info.images) == (
            "torch",
            "fp32",
            len(photos),
        )
    assert run_index(settings, shared_embedder).unchanged == len(photos)
    with open_store(settings) as store, store.database.connection() as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'image_search_meta' AND column_name IN ('backend', 'precision')"
        ).fetchall()
    assert len(columns) == 2


def test_the_jina_layout_indexes_and_searches_by_text_without_its_code(
    make_settings, photos: list[Path], jina_layout_model: Path, model_cache: Path
) -> None:
    settings = dataclasses.replace(
        onnx_settings(make_settings, jina_layout_model, "int8"), trust_remote_code=False
    )
    embedder = onnx_embedder(jina_layout_model, model_cache, "int8", trust_remote_code=False)
    assert run_index(settings, embedder).added == len(photos)
    text = "赤いりんご"
    with open_store(settings) as store:
        result = Searcher(settings, store, embedder).by_text(text)
    assert result.searched == len(photos)
    # The model's own vectors (the stored images', the text's) rank the photos so:
    expected = ranking_by_vectors(settings, embedder.embed_texts([text])[0])[: settings.top_k]
    assert_ranked_as([(match.file_path, match.score) for match in result.results], expected)


def test_the_cli_indexes_searches_and_reports_with_the_onnx_backend(
    settings: Settings, photos: list[Path], tmp_path: Path
) -> None:
    from conftest import run_cli, write_config

    # A model of its own, so that no other test's export in the shared cache serves it.
    model = shutil.copytree(settings.model_name, tmp_path / "own-tiny-clip")
    config = write_config(tmp_path / "config.json", settings, **{"model-name": str(model)})
    flags = ("--backend", "onnx", "--precision", "int8")
    indexed = run_cli("index", "--env", str(config), "--json", *flags)
    assert indexed.returncode == 0, indexed.stderr
    assert json.loads(indexed.stdout)["added"] == len(photos)
    assert "exporting" in indexed.stderr and "to ONNX (int8)" in indexed.stderr
    found = run_cli("search", "--env", str(config), "--image", str(photos[2]), "--json", *flags)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["results"][0]["file_path"] == str(photos[2])
    assert "exporting" not in found.stderr  # the cache serves the second process
    status = json.loads(run_cli("status", "--env", str(config), "--json").stdout)
    assert (status["backend"], status["precision"]) == ("onnx", "int8")
    torch_search = run_cli("search", "--env", str(config), "--image", str(photos[2]))
    assert torch_search.returncode == 2
    assert "--table-name" in torch_search.stderr and "made by onnx int8" in torch_search.stderr
    assert "--backend onnx --precision int8" in torch_search.stderr  # the flags that use it


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"backend": "tensorrt"}, "backend"),
        ({"precision": "fp8"}, "precision"),
        ({"backend": "torch", "precision": "int8"}, "precision"),  # torch has no int8
        ({"backend": "onnx", "precision": "bf16"}, "precision"),
    ],
)
def test_impossible_backend_and_precision_are_configuration_errors(
    tmp_path: Path, values: dict, key: str
) -> None:
    from conftest import run_cli

    config = tmp_path / "config.json"
    config.write_text(json.dumps(values))
    done = run_cli("status", "--env", str(config))
    assert done.returncode == 2
    assert f"'{key}'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_thread_count_given_reaches_every_session(
    tiny_clip: Path, jina_layout_model: Path, model_cache: Path
) -> None:
    """A Ray actor owns two CPUs: its ONNX Runtime sessions must not take every core."""
    for model in (tiny_clip, jina_layout_model):
        embedder = onnx_embedder(model, model_cache, "int8")
        embedder.threads = 1
        loaded = embedder.model()
        for tower in (loaded._image, loaded._text):
            assert tower.session().get_session_options().intra_op_num_threads == 1


# ---------------------------------------------------------------- opening a session quickly


def test_a_graph_is_opened_from_its_optimised_copy_made_once(tmp_path: Path) -> None:
    """The optimised copy keeps the graph's results, holds its weights in a file of their own
    (mapped, not parsed, when opened), and is made once per graph file."""
    import onnxruntime
    from tiny_immich import build_immich_model

    from image_search.models.onnx_runtime import OPTIMISED_WEIGHTS, Tower

    model = build_immich_model(tmp_path / "model", batch=None)
    graph, cache = model / "textual" / "model.onnx", tmp_path / "cache"
    ids = np.random.default_rng(0).integers(0, 200, (3, 77)).astype(np.int32)
    expected = onnxruntime.InferenceSession(str(graph)).run(None, {"text": ids})[0]
    first = Tower(graph, None, "cpu", optimised_cache=cache).run({"text": ids})
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    assert (entry / OPTIMISED_WEIGHTS).stat().st_size > 0
    made = (entry / "model.onnx").stat().st_mtime_ns
    again = Tower(graph, None, "cpu", optimised_cache=cache).run({"text": ids})
    assert (entry / "model.onnx").stat().st_mtime_ns == made
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again, first)

    build_immich_model(model, batch=None, seed=8)  # the same file name, other weights
    changed = Tower(graph, None, "cpu", optimised_cache=cache).run({"text": ids})
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2
    assert not np.allclose(changed, first)


def test_a_graph_runs_even_where_no_optimised_copy_can_be_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tiny_immich import build_immich_model

    from image_search.models.onnx_runtime import Tower

    model = build_immich_model(tmp_path / "model", batch=None)
    graph = model / "textual" / "model.onnx"
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache would go")
    ids = np.ones((1, 77), dtype=np.int32)
    with caplog.at_level(logging.WARNING):
        vectors = Tower(graph, None, "cpu", optimised_cache=blocked).run({"text": ids})
    expected = Tower(graph, None, "cpu").run({"text": ids})
    np.testing.assert_array_equal(vectors, expected)
    assert any("optimised copy" in r.getMessage() for r in caplog.records)
