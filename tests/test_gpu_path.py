"""The GPU ingest path, exercised on the CPU: JPEGs decoded as tensors (torchvision's decoder,
nvJPEG on a GPU), turned upright, resized and encoded; files it cannot take routed to Pillow;
the background writer; the batch size. No GPU is needed: the same code runs on the CPU."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import stored_rows
from imagegen import photo, write_broken_files, write_exif_rotated, write_photo
from PIL import Image, ImageOps

from image_search import executor_local
from image_search.config import Settings
from image_search.executor_local import batch_size_for
from image_search.images import ResizeSpec, prepare_file
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.pipeline import BackgroundWriter, DevicePreparer, Failure, Prepared, WorkItem
from image_search.scan import stat_file
from image_search.tensor_images import resized, tensor_header, upright
from image_search.two_decoders import TwoDecoders

SPEC = ResizeSpec(width=96, height=64, mode="fit", max_pixels=10**8)


def jpeg_bytes(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", **options)
    return out.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_a_tensor_as_pillow_turns_the_image(orientation: int) -> None:
    import torch

    image = Image.fromarray(np.arange(5 * 3 * 3, dtype=np.uint8).reshape(3, 5, 3), "RGB")
    image.getexif()[0x0112] = orientation
    expected = np.asarray(ImageOps.exif_transpose(image))
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    turned = upright(pixels, orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(turned, expected)


def test_only_8_bit_rgb_or_grey_jpegs_go_to_the_tensor_decoder(tmp_path: Path) -> None:
    rgb = jpeg_bytes(photo(1, 90, 60))
    header = tensor_header(rgb, max_pixels=10**8)
    assert header is not None and (header.width, header.height, header.orientation) == (90, 60, 1)
    assert tensor_header(jpeg_bytes(photo(1).convert("L")), 10**8) is not None
    assert tensor_header(jpeg_bytes(photo(1), progressive=True), 10**8) is not None
    rotated = tensor_header(write_exif_rotated(tmp_path / "r.jpg").read_bytes(), 10**8)
    assert rotated is not None and rotated.orientation == 6
    png = io.BytesIO()
    photo(1).save(png, format="PNG")
    for refused in (
        jpeg_bytes(photo(1).convert("CMYK")),  # nvJPEG has no CMYK
        png.getvalue(),
        rgb[:40],  # cut inside the header
        b"not an image",
    ):
        assert tensor_header(refused, 10**8) is None
    assert tensor_header(rgb, max_pixels=90 * 60 - 1) is None  # over the limit: Pillow says so


def test_resized_tensors_match_pillows_resize_closely() -> None:
    import torch

    image = photo(3, 400, 300)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    ours = resized(pixels, SPEC).permute(1, 2, 0).numpy().astype(np.int16)
    pillow = np.asarray(image.resize((85, 64), Image.Resampling.BICUBIC)).astype(np.int16)
    assert ours.shape == pillow.shape == (64, 85, 3)
    assert np.abs(ours - pillow).mean() < 3  # the same filter, up to rounding


def work_items(paths: list[Path]) -> list[WorkItem]:
    return [WorkItem(stat_file(str(path)), None) for path in paths]


def test_the_device_path_routes_what_it_cannot_take_to_pillow(
    settings: Settings, shared_embedder: Embedder
) -> None:
    folder = settings.source_directory
    plain = write_photo(folder / "plain.jpg", seed=1, width=320, height=240)
    turned = write_exif_rotated(folder / "turned.jpg")
    cmyk = folder / "cmyk.jpg"
    photo(2).convert("CMYK").save(cmyk, format="JPEG")
    png = write_photo(folder / "flat.png", seed=3)
    broken = write_broken_files(folder / "broken")[0]  # a JPEG cut short
    paths = [plain, turned, cmyk, png, broken]

    spec = ResizeSpec.of(settings)
    with ThreadPoolExecutor(2) as pool:
        preparer = TwoDecoders(DevicePreparer(settings, spec, "cpu", pool), pool, spec.budget())
        preparer.share = 0.0  # every JPEG the decoder takes goes to it
        results = preparer.prepare(work_items(paths))

    assert [type(r) for r in results] == [Prepared] * 4 + [Failure]
    kinds = [type(r.image.image).__name__ for r in results[:4]]
    assert kinds == ["Tensor", "Tensor", "Image", "Image"]  # CMYK and PNG: Pillow
    assert results[4].path == str(broken) and results[4].error
    upright_one = results[1].image.image
    assert upright_one.shape[1] > upright_one.shape[2]  # portrait: height > width
    assert upright_one[0, 2, upright_one.shape[2] // 2] > 200  # red on top
    for result in results[:4]:
        with Image.open(result.processed_path) as written:
            assert written.format == "JPEG"
    tensors = shared_embedder.embed_images([results[0].image.image])
    pillows = shared_embedder.embed_images([prepare_file(plain, ResizeSpec.of(settings))])
    assert float(tensors[0] @ pillows[0]) > 0.99


def test_an_index_run_on_the_device_path_stores_what_the_pillow_path_stores(
    make_settings, photos: list[Path], shared_embedder: Embedder, monkeypatch
) -> None:
    pillow_run = make_settings()
    run_index(pillow_run, shared_embedder)
    device_run = make_settings(table_name=pillow_run.table_name + "_device")
    monkeypatch.setattr(executor_local, "tensor_device_for", lambda device: "cpu")

    report = run_index(device_run, shared_embedder)

    assert report.added == len(photos) and not report.failed
    by_pillow = {r["file_path"]: r["embedding"] for r in stored_rows(pillow_run)}
    by_device = {r["file_path"]: r["embedding"] for r in stored_rows(device_run)}
    assert by_device.keys() == by_pillow.keys()
    for path, vector in by_device.items():
        assert float(vector @ by_pillow[path]) > 0.99, path


def test_the_writer_keeps_order_bounds_its_queue_and_reports_an_error() -> None:
    done: list[int] = []
    release = threading.Event()

    def blocked_write() -> None:
        release.wait(10)
        done.append(0)

    with BackgroundWriter(depth=2) as writer:
        writer.submit(blocked_write)  # taken by the thread, then blocks it
        writer.submit(lambda: done.append(1))
        writer.submit(lambda: done.append(2))  # the queue is full now
        fourth = threading.Thread(target=writer.submit, args=(lambda: done.append(3),))
        fourth.start()
        fourth.join(0.5)
        assert fourth.is_alive()  # a full queue holds the producer back: memory stays flat
        release.set()
        fourth.join(10)
    assert done == [0, 1, 2, 3]

    def failing() -> None:
        raise OSError("disk full")

    writer = BackgroundWriter(depth=2)
    writer.submit(failing)
    writer.submit(lambda: done.append(4))  # skipped: after an error nothing half done
    with pytest.raises(OSError, match="disk full"):
        writer.close()
    assert done == [0, 1, 2, 3]


def test_without_depth_the_writer_writes_at_once() -> None:
    done: list[int] = []
    with BackgroundWriter(depth=0) as writer:
        writer.submit(lambda: done.append(1))
        assert done == [1]


def test_batch_size_is_the_key_or_sixteen_on_the_cpu(settings: Settings) -> None:
    import dataclasses

    assert batch_size_for(dataclasses.replace(settings, batch_size=None), "cpu") == 16
    assert batch_size_for(dataclasses.replace(settings, batch_size=7), "cuda") == 7
    tensor_device_for = executor_local.tensor_device_for
    assert tensor_device_for("cpu") is None and tensor_device_for("mps") is None
    assert tensor_device_for("cuda:0") == "cuda:0"


JINA_PREPROCESSOR = {  # jina-clip-v2's preprocessor_config.json keys, at a small size
    "resize_mode": "shortest",
    "size": 48,
    "interpolation": "bicubic",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
}
CLIP_PREPROCESSOR = {"size": {"shortest_edge": 40}, "crop_size": 32, "do_center_crop": True}


@pytest.mark.parametrize("config", [JINA_PREPROCESSOR, CLIP_PREPROCESSOR], ids=["jina", "clip"])
@pytest.mark.parametrize("size", [(400, 300), (300, 500), (60, 36)], ids=str)
def test_model_pixels_from_tensors_match_the_pillow_recipe(
    config: dict, size: tuple[int, int]
) -> None:
    import torch

    from image_search.models.onnx_runtime import PixelRecipe
    from image_search.models.tensor_pixels import model_pixels

    recipe = PixelRecipe.from_config(config)
    image = photo(4, *size)
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    ours = model_pixels([pixels], recipe).numpy()
    pillow = recipe([image])
    assert ours.shape == pillow.shape
    # The same filter up to rounding: about 2 of 255 levels, in normalised units (÷ std).
    assert np.abs(ours - pillow).mean() < 2 / 255 / 0.26


def test_a_model_with_its_own_code_embeds_tensors_without_pillow(
    remote_code_model: Path, monkeypatch
) -> None:
    """The GPU path hands CHW tensors to the model: a remote-code model (jina-clip-v2's
    interface) preprocesses them itself from its preprocessor_config.json and calls
    get_image_features, never encode_image with Pillow images."""
    import torch

    embedder = Embedder(str(remote_code_model), "cpu", 32)
    images = [prepare_file(write_photo(remote_code_model.parent / f"q{i}.jpg", seed=i), SPEC)
              for i in range(3)]
    by_pillow = embedder.embed_images(images)
    model = embedder.model()
    assert type(model).__name__ == "RemoteCodeModel" and model.accepts_tensors

    def no_pillow(*args, **kwargs):
        raise AssertionError("tensors went through Pillow to encode_image")

    monkeypatch.setattr(model._model, "encode_image", no_pillow)
    tensors = [torch.from_numpy(np.asarray(i).copy()).permute(2, 0, 1) for i in images]
    by_tensor = embedder.embed_images(tensors)
    assert by_tensor.shape == by_pillow.shape == (3, 32)
    for ours, theirs in zip(by_tensor, by_pillow, strict=True):
        assert float(ours @ theirs) > 0.99


def test_a_remote_model_whose_code_refuses_pixels_falls_back_to_pillow(
    remote_code_model: Path, monkeypatch, caplog
) -> None:
    import torch

    embedder = Embedder(str(remote_code_model), "cpu", 32)
    image = prepare_file(write_photo(remote_code_model.parent / "f.jpg", seed=9), SPEC)
    model = embedder.model()

    real = model._model.get_image_features
    calls: list[int] = []

    def refuses_the_first_call(*args, **kwargs):  # then encode_image's own call goes through
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("get_image_features() got an unexpected keyword argument")
        return real(*args, **kwargs)

    monkeypatch.setattr(model._model, "get_image_features", refuses_the_first_call)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    by_tensor = embedder.embed_images([tensor])
    assert "using Pillow" in caplog.text
    np.testing.assert_allclose(by_tensor, embedder.embed_images([image]), atol=1e-5)


def test_onnx_on_cuda_without_torch_decodes_with_pillow_and_sizes_batches_without_it(
    tmp_path: Path, data_directory: Path, monkeypatch
) -> None:
    """onnxruntime-gpu without torch (models/precision.py's set-up): the run decodes with
    Pillow and sizes its batches from the driver, never an ImportError. Only the device
    query is faked: a CUDA device with 10 GiB free."""
    import dataclasses
    import sys

    from fake_model import FAKE_DIMENSION, FakeColourModel, fake_model_settings, write_palette

    for module in executor_local.TENSOR_MODULES:
        monkeypatch.setitem(sys.modules, module, None)  # importing it fails, as uninstalled
    monkeypatch.setattr(executor_local, "_nvidia_smi_free_memory", lambda device: 10 * 2**30)
    settings = dataclasses.replace(
        fake_model_settings(tmp_path, data_directory, "cuda_without_torch", backend="onnx"),
        device="cuda",
    )
    photos = write_palette(settings.source_directory)
    model = FakeColourModel()
    embedder = Embedder(model.name, "cuda", FAKE_DIMENSION, model.loader, backend="onnx")
    embedder.resolved_device = "cuda"  # what device resolution says on such a machine

    assert executor_local.tensor_device_for("cuda") is None
    assert batch_size_for(settings, "cuda") == 64  # 8 to 16 GiB free
    report = run_index(settings, embedder)

    assert report.added == len(photos) and not report.failed
    assert model.image_batches == [len(photos)]  # one GPU-sized batch
