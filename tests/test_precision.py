"""One decision of backend, precision and device (models.precision.decide), checked on
hardware faked at its probe: computers without a GPU, with NVIDIA GPUs (torch, or only
onnxruntime-gpu and no torch at all), Macs; filled tables; accelerators asked for and absent;
a Ray worker on another machine; and nothing logged but by the model that loads."""

from __future__ import annotations

import dataclasses
import logging
import sys

import pytest
from fake_hardware import hardware
from fake_model import FakeColourModel

from image_search.config import Settings
from image_search.models import Embedder
from image_search.models.precision import (
    ONNX_FP16_ON_CPU,
    TORCH_WITHOUT,
    Decision,
    Hardware,
    decide,
    planned_spec,
)
from image_search.vectors import VectorSpec

pytestmark = pytest.mark.fast

TORCH_MODULES = ("torch", "transformers")


def made(decision: Decision) -> tuple[str, str, str]:
    return decision.backend, decision.precision, decision.device


CPU_ONLY = {"nvidia_driver": False, "other_gpu_driver": False, "apple_silicon": False}
NVIDIA = {"nvidia_driver": True, "apple_silicon": False}
NVIDIA_ONNX_ONLY = {**NVIDIA, "onnx_cuda": True, "torch_cuda": False}


@pytest.fixture
def without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch and transformers not installed: not found, and any import of them fails."""
    for module in TORCH_MODULES:
        monkeypatch.setitem(sys.modules, module, None)


def test_a_computer_without_a_gpu_runs_onnx_int8_and_never_asks_torch() -> None:
    decision = decide("auto", "auto", "auto", hardware=hardware(**CPU_ONLY))
    assert decision == Decision(
        "onnx", "int8", "cpu", "no GPU for torch here: ONNX Runtime is fastest"
    )
    # torch asked for on such a computer: fp32 on the CPU, still without importing torch.
    assert decide("torch", "auto", "auto", hardware=hardware(**CPU_ONLY)) == Decision(
        "torch", "fp32", "cpu"
    )


@pytest.mark.parametrize(("bf16", "precision"), [(True, "bf16"), (False, "fp16")])
def test_a_cuda_gpu_with_torch_runs_torch_in_half_precision(bf16: bool, precision: str) -> None:
    gpu = hardware(**NVIDIA, torch_cuda=True, torch_bf16=bf16)
    decision = decide("auto", "auto", "auto", hardware=gpu)
    assert decision == Decision("torch", precision, "cuda", "a GPU is here and torch is installed")


def test_a_mac_runs_torch_in_fp16_on_mps() -> None:
    mac = hardware(
        nvidia_driver=False, other_gpu_driver=True, apple_silicon=True, torch_cuda=False,
        torch_mps=True,
    )
    assert made(decide("auto", "auto", "auto", hardware=mac)) == ("torch", "fp16", "mps")


def test_onnx_on_a_cuda_gpu_is_decided_without_torch(
    without_torch: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CUDA GPU, onnxruntime-gpu and no torch (the `gpu` extra without the `torch` one):
    onnx in fp16 on the GPU, decided without importing torch. Only the probe is faked, and
    it has no torch answer: asking one fails the test, as importing torch would."""
    from image_search.models import precision

    gpu = hardware(**NVIDIA, onnx_cuda=True)
    monkeypatch.setattr(precision, "system_hardware", lambda: gpu)
    decision = decide("auto", "auto", "auto")
    assert decision == Decision("onnx", "fp16", "cuda", "a CUDA GPU is here with onnxruntime-gpu")
    assert made(decide("onnx", "auto", "cuda")) == ("onnx", "fp16", "cuda")
    # The model and the vectors a table records, as a script or a Ray worker builds them.
    settings = Settings(model_name="m", dimension=8)
    embedder = Embedder.from_settings(settings)
    assert made(embedder.decision) == ("onnx", "fp16", "cuda")
    assert planned_spec(settings).precision == "fp16"
    with pytest.raises(ImportError):
        __import__("torch")  # torch really is out of reach here


def test_without_onnxruntime_gpu_a_cuda_gpu_is_left_to_the_cpu(without_torch: None) -> None:
    gpu = hardware(**NVIDIA, onnx_cuda=False)
    assert made(decide("auto", "auto", "auto", hardware=gpu)) == ("onnx", "int8", "cpu")


def filled(backend: str, precision: str) -> VectorSpec:
    return VectorSpec("m", 8, backend=backend, precision=precision)


@pytest.mark.parametrize(
    ("table", "on", "expected"),
    [
        (filled("torch", "fp32"), CPU_ONLY, ("torch", "fp32", "cpu")),
        (filled("onnx", "int8"), CPU_ONLY, ("onnx", "int8", "cpu")),
        (filled("onnx", "fp32"), CPU_ONLY, ("onnx", "fp32", "cpu")),
        # A float onnx table on a GPU: the GPU's float precision, the same vectors' kind.
        (filled("onnx", "fp32"), NVIDIA_ONNX_ONLY, ("onnx", "fp16", "cuda")),
        (filled("onnx", "int8"), NVIDIA_ONNX_ONLY, ("onnx", "int8", "cuda")),
    ],
)
def test_auto_keeps_what_filled_the_table(
    table: VectorSpec, on: dict[str, bool], expected: tuple[str, str, str]
) -> None:
    """An upgrade never forces a re-index while the table's backend is installed."""
    decision = decide("auto", "auto", "auto", table, hardware(**on))
    assert made(decision) == expected
    assert decision.reason == f"the table was filled with {table.backend} {table.precision}"


def test_a_table_filled_by_torch_without_torch_gets_onnx(without_torch: None) -> None:
    """Then refused with the table's flags, as for any other settings (test_cpu_default)."""
    decision = decide("auto", "auto", "auto", filled("torch", "fp32"), hardware(**CPU_ONLY))
    assert (decision.backend, decision.reason) == (
        "onnx",
        "no GPU for torch here: ONNX Runtime is fastest",
    )


def test_what_the_settings_name_comes_before_the_table() -> None:
    torch_table, cpu = filled("torch", "fp32"), hardware(**CPU_ONLY)
    assert decide("onnx", "auto", "auto", torch_table, cpu) == Decision("onnx", "int8", "cpu")
    int8 = decide("auto", "int8", "auto", torch_table, cpu)
    assert (int8.backend, int8.reason) == ("onnx", "precision int8 runs in ONNX Runtime")
    bf16 = decide("auto", "bf16", "cpu", filled("onnx", "int8"), cpu)
    assert (bf16.backend, bf16.reason) == ("torch", "precision bf16 runs in torch")


def test_absent_accelerators_give_the_cpu_and_say_so_in_the_decision(
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_gpu = hardware(**CPU_ONLY, onnx_cuda=False, torch_cuda=False, torch_mps=False)
    with caplog.at_level(logging.DEBUG):
        onnx = decide("onnx", "auto", "cuda", hardware=no_gpu)
        half = decide("onnx", "fp16", "auto", hardware=no_gpu)
        torch_gpu = decide("torch", "auto", "cuda", hardware=no_gpu)
        mps = decide("torch", "auto", "mps", hardware=no_gpu)
    assert made(onnx) == ("onnx", "int8", "cpu")
    assert onnx.warnings == (
        "device 'cuda' was asked for, but the onnx backend has no CUDA here (it needs the gpu "
        "extra, onnxruntime-gpu, and a CUDA GPU); using the CPU",
    )
    assert (made(half), half.warnings) == (("onnx", "fp32", "cpu"), (ONNX_FP16_ON_CPU,))
    assert made(torch_gpu) == made(mps) == ("torch", "fp32", "cpu")
    assert (torch_gpu.warnings, mps.warnings) == ((TORCH_WITHOUT["cuda"],), (TORCH_WITHOUT["mps"],))
    assert caplog.records == []  # deciding logs nothing
    # A second decision in the same process says it again: nothing is cached away.
    assert decide("onnx", "auto", "cuda", hardware=no_gpu).warnings == onnx.warnings


def test_the_model_tells_the_warnings_once_when_it_loads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    no_gpu = hardware(**CPU_ONLY, onnx_cuda=False)
    decision = decide("onnx", "fp16", "cuda", hardware=no_gpu)
    assert len(decision.warnings) == 2
    settings = Settings(model_name="m", dimension=8)

    def load(embedder: Embedder) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            embedder.model()
            embedder.model()
        return [record.getMessage() for record in caplog.records]

    model = FakeColourModel()
    first = Embedder.from_settings(settings, decision)
    first._loader = model.loader
    assert not first.loaded
    assert load(first) == list(decision.warnings)
    second = Embedder.from_settings(settings, decision)  # another model in the same process
    second._loader = model.loader
    assert load(second) == list(decision.warnings)


@pytest.mark.parametrize(
    ("driver", "worker", "device"),
    [
        # The driver has no GPU; the worker's node has one and onnxruntime-gpu.
        (CPU_ONLY, NVIDIA_ONNX_ONLY, "cuda"),
        # The driver runs onnx in fp16 on its GPU; the worker's node has none.
        (NVIDIA_ONNX_ONLY, {**CPU_ONLY, "onnx_cuda": False}, "cpu"),
    ],
)
def test_a_ray_worker_on_another_machine_makes_the_drivers_vectors(
    driver: dict[str, bool], worker: dict[str, bool], device: str
) -> None:
    """Workers are sent the settings the decision was applied to: deciding again there may
    change where the model runs, never the kind of vectors a table records."""
    settings = Settings(model_name="m", dimension=8)
    on_driver = decide("auto", "auto", "auto", hardware=hardware(**driver))
    sent = on_driver.applied_to(settings)
    on_worker = decide(sent.backend, sent.precision, sent.device, hardware=hardware(**worker))
    assert on_worker.device == device
    assert on_worker.backend == on_driver.backend
    assert planned_spec(sent, on_worker).same_vectors(planned_spec(settings, on_driver))
    # Unapplied, the worker's `auto` would have chosen vectors of another kind.
    unapplied = decide("auto", "auto", "auto", hardware=hardware(**worker))
    assert not planned_spec(settings, unapplied).same_vectors(planned_spec(settings, on_driver))


def test_the_applied_settings_name_the_decision_and_keep_the_rest() -> None:
    settings = Settings(model_name="m", dimension=8, device="auto")
    decision = Decision("onnx", "int8", "cpu", "why")
    applied = decision.applied_to(settings)
    assert (applied.backend, applied.precision, applied.device) == ("onnx", "int8", "auto")
    assert dataclasses.replace(applied, backend="auto", precision="auto") == settings


def test_the_real_probe_answers_once_per_process() -> None:
    """Probing may be cached because it never logs: one probe per process, each answer
    asked once and kept on it."""
    from image_search.models import precision

    assert precision.system_hardware() is precision.system_hardware()
    probe = Hardware()
    assert "nvidia_driver" not in vars(probe)  # nothing asked before a decision needs it
    answer = probe.nvidia_driver
    assert vars(probe)["nvidia_driver"] is answer  # kept: asked once


def test_the_real_probe_decides_torch_on_this_computer() -> None:
    """This computer's own answers (a GPU or not), through torch itself."""
    import torch

    cuda = torch.cuda.is_available()
    decision = decide("torch", "auto", "cuda")
    assert decision.device == ("cuda" if cuda else "cpu")
    assert decision.warnings == (() if cuda else (TORCH_WITHOUT["cuda"],))
    assert decide("torch", "auto", "cpu") == Decision("torch", "fp32", "cpu")
