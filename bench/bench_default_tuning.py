"""What could make the default model faster on a CPU, each tried side by side with the default.

    uv run python bench/bench_default_tuning.py [--images 8] [--runs 3] [--agreement 16]

On bench_cpu_default.py's stand-in of jina-clip-v2 (a random ViT-L/14 at 512 px in jina's
published layout, its int8 graph as image-search runs it by default), round after round
(medians), the whole `index` of 12-megapixel JPEGs per photo with:

- default             the published int8 graph, one image at a time (what a user runs)
- fused attention     the same graph with each attention (MatMul, Softmax, MatMul and the
                      reshapes around them) fused into ONNX Runtime's MultiHeadAttention
- int8 attention      the same graph with its attention MatMuls (activation by activation,
                      float in the published graph) quantised dynamically too
- spinning threads    ONNX Runtime's intra-op threads spinning between parallel sections
- prepare beside      the next batch decoded while this one is embedded (the CPU path takes
                      turns)

and the image tower alone (one image) for each, with each graph's cosine to the fp32 graph
over `--agreement` prepared photos. (bench_cpu_default.py sets the default against torch fp32;
one model is kept in memory at a time here, each opened afresh every round.) ONNX Runtime's own
transformer optimiser (onnxruntime.transformers.optimizer, model types vit, bert and clip)
was tried as well: it fuses no attention in these graphs (see BENCHMARKS.md w).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from bench_cpu_default import PROJECTION, stand_in
from bench_onnx import index_seconds
from common import DATA, cores, jpeg_folder, median_of, timed

from image_search import executor_local
from image_search.config import Settings
from image_search.images import ResizeSpec, prepare_file
from image_search.models import Embedder
from image_search.models.onnx_runtime import Tower

GRAPHS = DATA / "default-tuning"


# ---------------------------------------------------------------- graph variants


def fuse_attention(source: Path, target: Path) -> int:
    """Write `source` with each torch-exported scaled dot-product attention (Q·Kᵀ·scale,
    Softmax, ·V, with the head reshapes around them) replaced by com.microsoft's
    MultiHeadAttention; return how many were fused."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initialisers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}

    def constant(name: str) -> np.ndarray | None:
        if name in initialisers:
            return initialisers[name]
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        if node is not None and node.op_type == "Identity":
            return constant(node.input[0])
        return None

    def only(name: str, op: str) -> Any:
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def perm(node: Any) -> list[int]:
        return [list(a.ints) for a in node.attribute if a.name == "perm"][0]

    def heads(name: str, order: list[int]) -> tuple[str, float, int, Any, Any] | None:
        """`name` <- [Mul by a scalar] <- Transpose(order) <- Reshape to (B, S, heads, size)
        <- X: (X, the scalar, the head size, the Mul, the Transpose)."""
        scale, mul = 1.0, None
        node = producer.get(name)
        if node is not None and node.op_type == "Mul":
            value = constant(node.input[1])
            if value is None or value.size != 1:
                return None
            scale, mul, node = float(value.reshape(-1)[0]), node, producer.get(node.input[0])
        if node is None or node.op_type != "Transpose" or perm(node) != order:
            return None
        reshape = producer.get(node.input[0])
        if reshape is None or reshape.op_type != "Reshape":
            return None
        shape = producer.get(reshape.input[1])
        if shape is None or shape.op_type != "Concat":
            return None
        size = constant(shape.input[3])
        if size is None:
            return None
        return reshape.input[0], scale, int(size.reshape(-1)[0]), mul, node

    removed: set[int] = set()
    fused = []
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        scores = producer.get(softmax.input[0])
        mix = only(softmax.output[0], "MatMul")
        if scores is None or scores.op_type != "MatMul" or mix is None:
            continue
        query = heads(scores.input[0], [0, 2, 1, 3])
        key = heads(scores.input[1], [0, 2, 3, 1])
        value = heads(mix.input[1], [0, 2, 1, 3])
        back = only(mix.output[0], "Transpose")
        merge = only(back.output[0], "Reshape") if back is not None else None
        if None in (query, key, value, merge) or perm(back) != [0, 2, 1, 3]:
            continue
        width = _projection_width(query[0], producer, constant)
        if width is None:
            continue
        fused.append(
            helper.make_node(
                "MultiHeadAttention",
                [query[0], key[0], value[0]],
                [merge.output[0]],
                name=softmax.name + "/MultiHeadAttention",
                domain="com.microsoft",
                num_heads=width // query[2],
                scale=query[1] * key[1],
            )
        )
        for node in (scores, softmax, mix, back, merge, query[3], key[3]):
            if node is not None:
                removed.add(id(node))
    kept = [n for n in graph.node if id(n) not in removed]
    del graph.node[:]
    graph.node.extend(_in_order(kept + fused, graph))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(target))
    return len(fused)


def _projection_width(name: str, producer: dict[str, Any], constant: Any) -> int | None:
    """The width of the query projection that makes `name`: the length of the 1-D bias it
    adds last (MatMul or MatMulInteger, then Add of the bias)."""
    node = producer.get(name)
    if node is None or node.op_type != "Add":
        return None
    for part in node.input:
        value = constant(part)
        if value is not None and value.ndim == 1:
            return int(value.shape[0])
    return None


def _in_order(nodes: list[Any], graph: Any) -> list[Any]:
    """`nodes` in an order where every input is made before it is used."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        waiting = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError("the graph has an input nothing makes")
        pending = waiting
    return ordered


def quantise_attention(source: Path, target: Path) -> None:
    """`source` with its remaining float MatMuls (the attention's) quantised dynamically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": False},
    )


class SpinningTower(Tower):
    """A Tower whose session lets its threads spin between parallel sections."""

    def session(self) -> Any:
        import onnxruntime as ort

        with self._lock:
            if self._session is None:
                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.add_session_config_entry("session.intra_op.allow_spinning", "1")
                session = ort.InferenceSession(
                    str(self.graph), options, providers=["CPUExecutionProvider"]
                )
                self._inputs = {i.name: i for i in session.get_inputs()}
                self._session = session
            return self._session


@contextmanager
def prepare_beside() -> Iterator[None]:
    """The CPU path preparing the next batch while this one is embedded."""
    original = executor_local.prepared_batches

    def overlapping(pool: Any, prepare: Any, work: Any, size: int, overlap: bool) -> Any:
        return original(pool, prepare, work, size, True)

    executor_local.prepared_batches = overlapping
    try:
        yield
    finally:
        executor_local.prepared_batches = original


# ---------------------------------------------------------------- the benchmark


def default_embedder(folder: Path, precision: str = "int8") -> Embedder:
    return Embedder(
        str(folder),
        "cpu",
        PROJECTION,
        backend="onnx",
        precision=precision,
        cache_directory=DATA / "cpu-default-models",
    )


def with_image_tower(folder: Path, tower: Tower | None) -> Embedder:
    """The default's embedder, its image tower replaced by `tower` (if given)."""
    embedder = default_embedder(folder)
    model: Any = embedder.model()
    if tower is not None:
        model._image = tower
    return embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--agreement", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = jpeg_folder(f"twelve-mp-{args.images}", args.images)
    _, jina_folder = stand_in()
    base = Settings(
        source_directory=folder,
        data_directory=DATA / "cpu-default-db",
        dimension=PROJECTION,
        device="cpu",
        batch_size=16,
    )
    photos = [
        prepare_file(p, ResizeSpec.of(base))
        for p in sorted(jpeg_folder(f"twelve-mp-{args.agreement}", args.agreement).iterdir())
    ]
    # One model in memory at a time: these graphs take 1 to 4 GB each while they run.
    fp32: Any = default_embedder(jina_folder, "fp32").model()
    pixels = [fp32._pixels([photo]) for photo in photos]

    def vectors_of(tower: Tower) -> np.ndarray:
        return _unit(np.concatenate([tower.run({"pixel_values": p}) for p in pixels]))

    reference = vectors_of(fp32._image)
    del fp32
    gc.collect()
    published: Any = default_embedder(jina_folder).model()
    image_graph, output = published._image.graph, published._image.output
    GRAPHS.mkdir(parents=True, exist_ok=True)
    fused_graph, int8_attention_graph = GRAPHS / "fused.onnx", GRAPHS / "int8-attention.onnx"
    if not fused_graph.is_file():
        print(f"fused attentions: {fuse_attention(image_graph, fused_graph)}")
    if not int8_attention_graph.is_file():
        quantise_attention(image_graph, int8_attention_graph)
    # name: (image graph, its Tower class, what the index runs inside)
    variants: dict[str, tuple[Path, type[Tower], Any]] = {
        "default": (image_graph, Tower, _nothing),
        "fused attention": (fused_graph, Tower, _nothing),
        "int8 attention": (int8_attention_graph, Tower, _nothing),
        "spinning threads": (image_graph, SpinningTower, _nothing),
        "prepare beside": (image_graph, Tower, prepare_beside),
    }
    cosines = {
        name: (vectors_of(Tower(graph, output, "cpu", one_at_a_time=True)) * reference).sum(1)
        for name, (graph, _, _) in variants.items()
        if name in ("default", "fused attention", "int8 attention")
    }
    gc.collect()

    tower_runs: dict[str, list[float]] = {name: [] for name in variants}
    index_runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, (graph, kind, around) in variants.items():
            tower = kind(graph, output, "cpu", one_at_a_time=True)
            embedder = with_image_tower(jina_folder, tower)
            feed = {"pixel_values": pixels[0]}
            tower.run(feed)  # the session opens and warms up outside the timings
            tower_runs[name].append(median_of(timed(lambda t=tower, f=feed: t.run(f), 2)))
            settings = dataclasses.replace(base, model_name=embedder.model_name)
            with around():
                index_runs[name].append(index_seconds(settings, embedder, "tuning"))
            print(
                f"round {len(index_runs[name])} {name}: tower {tower_runs[name][-1]:.3f} s, "
                f"index {index_runs[name][-1] / args.images:.3f} s/img",
                flush=True,
            )
            del tower, embedder
            gc.collect()

    print(
        f"{args.images} 12-MP JPEGs, random ViT-L/14 at 512 px in jina's layout, cores "
        f"{cores()}, runs {args.runs} (medians); cosine to the fp32 graph over "
        f"{args.agreement} photos"
    )
    tower_default = median_of(tower_runs["default"])
    index_default = median_of(index_runs["default"]) / args.images
    print(
        f"{'':18} {'tower s':>7} {'x default':>9} {'index s/img':>11} {'x default':>9}  "
        "cosine to fp32, mean / min"
    )
    for name in variants:
        tower_s = median_of(tower_runs[name])
        index_s = median_of(index_runs[name]) / args.images
        cosine = cosines.get(name)
        agreement = f"{cosine.mean():.6f} / {cosine.min():.6f}" if cosine is not None else "-"
        print(
            f"{name:18} {tower_s:7.3f} {tower_default / tower_s:9.2f} {index_s:11.3f} "
            f"{index_default / index_s:9.2f}  {agreement}"
        )


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


if __name__ == "__main__":
    main()
