"""What the onnx backend needs at run time, and nothing more: ONNX Runtime sessions, the model's
image preprocessing in numpy and Pillow, and its tokenizer through the `tokenizers` library.
Neither torch nor transformers is imported here."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import platform
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import one_line
from .base import LoadOptions
from .onnx_export import build_once
from .precision import CUDA_PROVIDER

log = logging.getLogger(__name__)

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RESAMPLING = {resampling.name.lower(): resampling for resampling in Image.Resampling}
# An optimised copy of a graph (see optimised_copy).
OPTIMISED_GRAPH = "model.onnx"
OPTIMISED_WEIGHTS = "model.onnx_data"
# What ONNX Runtime's input types take from numpy.
INPUT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


# ---------------------------------------------------------------- sessions


def open_session(
    graph: Path,
    device: str,
    external_data: Path | None = None,
    threads: int | None = None,
    optimised_cache: Path | None = None,
    prepack: bool = True,
) -> Any:  # onnxruntime.InferenceSession
    """A session for `graph` on `device`. `external_data`: the folder holding the weights the
    graph refers to, where that is not the graph's own folder. `threads`: the CPU threads it
    may use (default: one per core). `optimised_cache`: where to keep the graph as ONNX
    Runtime optimises it for this computer, its weights in a file of their own (made once, on
    the CPU): such a copy opens several times faster, since nothing is left to optimise and
    the weights are mapped from their file rather than parsed. `prepack`: lay int8 weights out
    for the CPU's kernels when the session opens (quicker runs, slower opening)."""
    if optimised_cache is not None and device == "cpu":
        try:
            copy = optimised_copy(graph, external_data, optimised_cache)
            return new_session(copy, device, threads=threads, optimise=False, prepack=prepack)
        except Exception as exc:  # a copy is only quicker: without it the graph still runs
            log.warning(
                "cannot keep an optimised copy of %s in %s (%s); opening the graph itself",
                graph.name,
                optimised_cache,
                one_line(exc),
            )
    return new_session(graph, device, external_data, threads, prepack=prepack)


def new_session(
    graph: Path,
    device: str,
    external_data: Path | None = None,
    threads: int | None = None,
    *,
    optimise: bool = True,
    save_to: Path | None = None,
    prepack: bool = True,
) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if optimise else level.ORT_DISABLE_ALL
    # Spinning threads would keep both cores busy between batches, while an index run
    # decodes the next batch on them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", OPTIMISED_WEIGHTS
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        options.log_severity_level = 3  # its note that the copy suits this computer only
    providers = [CUDA_PROVIDER, "CPUExecutionProvider"] if device == "cuda" else None
    providers = providers or ["CPUExecutionProvider"]
    if external_data is None:
        session = ort.InferenceSession(str(graph), options, providers=providers)
    else:
        # ORT refuses weights outside the graph's folder (symbolic links resolved), so the
        # graph is handed over as bytes with the folder its weights live in.
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(external_data)
        )
        session = ort.InferenceSession(graph.read_bytes(), options, providers=providers)
    if device == "cuda" and CUDA_PROVIDER not in session.get_providers():
        log.warning("ONNX Runtime could not start CUDA for %s; running on the CPU", graph.name)
    return session


def optimised_copy(graph: Path, external_data: Path | None, cache: Path) -> Path:
    """`graph` optimised for this computer by ONNX Runtime and saved with its weights beside
    it, under `cache`, made once. Keyed on the graph's file, ONNX Runtime's version and this
    CPU's features, since the optimised graph may use kernels only this CPU has."""
    import onnxruntime as ort

    stat = graph.stat()
    parts = [str(graph.resolve()), str(stat.st_size), str(stat.st_mtime_ns), str(external_data)]
    parts += [ort.__version__, cpu_signature()]
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    entry = cache / f"{graph.parent.name[:40]}-{graph.stem}-{digest}"

    def build(into: Path) -> dict[str, Any]:
        new_session(graph, "cpu", external_data, save_to=into / OPTIMISED_GRAPH)
        return {"source": str(graph), "onnxruntime": ort.__version__}

    return build_once(entry, build, f"optimising {graph.name} for this computer") / OPTIMISED_GRAPH


@functools.cache
def cpu_signature() -> str:
    """This CPU's kind and instruction sets (the kernels an optimised graph may use)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        info = ""
    flags = next((line for line in info.splitlines() if line.startswith(("flags", "Features"))), "")
    return f"{platform.machine()} {platform.processor()} {flags}"


def quantises_per_batch(precision: str) -> bool:
    """Whether a graph in `precision` quantises its activations on the fly with one scale for
    the whole input tensor (ONNX Runtime's DynamicQuantizeLinear, in int8 graphs), so that an
    item's result depends on the other items of its batch."""
    return precision == "int8"


class Tower:
    """One graph (an image or a text tower): opened on first use, so that an index run never
    loads the text tower and a text query never loads the image tower.

    `graph`: the graph's path, or what makes it (a conversion run only when the tower is
    first used). `output`: the output to read (None: the graph's first). `optimised_cache`:
    where its optimised copy is kept, `prepack` whether its weights are laid out for the CPU's
    kernels when it opens (see open_session). `one_at_a_time`:
    run each item of a batch alone, so that its result never depends on the rest of the
    batch (for a graph that quantises_per_batch); a graph whose batch is fixed at one is
    always run so."""

    def __init__(
        self,
        graph: Path | Callable[[], Path],
        output: str | None,
        device: str,
        external_data: Path | None = None,
        *,
        one_at_a_time: bool = False,
        threads: int | None = None,
        optimised_cache: Path | None = None,
        prepack: bool = True,
    ) -> None:
        self._graph = graph
        self.optimised_cache = optimised_cache
        self.prepack = prepack
        self.threads = threads
        self.output = output
        self.device = device
        self.external_data = external_data
        self.one_at_a_time = one_at_a_time
        self._session: Any = None
        self._inputs: dict[str, Any] = {}
        self._batch_of_one = False
        self._lock = threading.Lock()

    @classmethod
    def for_images(
        cls,
        graph: Path | Callable[[], Path],
        output: str | None,
        device: str,
        options: LoadOptions,
        external_data: Path | None = None,
    ) -> Tower:
        """A model's image tower, as `options` load it: each photo alone where the graph
        quantises per batch."""
        return cls(
            graph,
            output,
            device,
            external_data,
            one_at_a_time=quantises_per_batch(options.precision),
            threads=options.threads,
            optimised_cache=options.optimised_directory,
        )

    @classmethod
    def for_texts(
        cls,
        graph: Path | Callable[[], Path],
        output: str | None,
        device: str,
        options: LoadOptions,
        external_data: Path | None = None,
    ) -> Tower:
        """A model's text tower, as `options` load it: its weights not prepacked, since it is
        opened for each command-line query, where its opening is most of the cost."""
        return cls(
            graph,
            output,
            device,
            external_data,
            threads=options.threads,
            optimised_cache=options.optimised_directory,
            prepack=False,
        )

    @property
    def graph(self) -> Path:
        """The graph's path (made first, where it is made on first use)."""
        if callable(self._graph):
            self._graph = self._graph()
        return self._graph

    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                session = open_session(
                    self.graph,
                    self.device,
                    self.external_data,
                    self.threads,
                    self.optimised_cache,
                    self.prepack,
                )
                self._inputs = {i.name: i for i in session.get_inputs()}
                first = next(iter(self._inputs.values()))
                self._batch_of_one = bool(first.shape) and first.shape[0] == 1
                self._session = session
            return self._session

    def input_names(self) -> list[str]:
        self.session()
        return list(self._inputs)

    def input_type(self, name: str) -> str:
        self.session()
        return self._inputs[name].type

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """The output for `feeds`: those the graph takes, in the number types it takes."""
        session = self.session()
        feeds = {
            name: np.asarray(value, dtype=INPUT_TYPES.get(self._inputs[name].type))
            for name, value in feeds.items()
            if name in self._inputs
        }
        if not (self.one_at_a_time or self._batch_of_one):
            return self._run(session, feeds)
        count = len(next(iter(feeds.values())))
        return np.concatenate(
            [self._run(session, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(count)]
        )

    def _run(self, session: Any, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        outputs = None if self.output is None else [self.output]
        vectors = session.run(outputs, dict(feeds))[0]
        return np.asarray(vectors, dtype=np.float32)


# ---------------------------------------------------------------- images


@dataclass(frozen=True)
class PixelRecipe:
    """A model's image preprocessing, read from its preprocessor_config.json: the Hugging Face
    keys (CLIPImageProcessor, SiglipImageProcessor, ...) or jina-clip's own."""

    shortest_edge: int | None  # resize so that the shorter side has this length
    size: tuple[int, int] | None  # or resize to exactly (height, width)
    crop: tuple[int, int] | None  # then cut the centre (height, width)
    resample: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # torchvision's CenterCrop (jina-clip) rounds the offset; transformers' floors it.
    round_crop: bool = False

    @classmethod
    def from_file(cls, path: Path) -> PixelRecipe:
        return cls.from_config(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PixelRecipe:
        if "resize_mode" in config or "interpolation" in config:
            return cls._jina(config)
        return cls._hugging_face(config)

    @classmethod
    def _hugging_face(cls, config: Mapping[str, Any]) -> PixelRecipe:
        shortest, exact = None, None
        if config.get("do_resize", True):
            size = config.get("size", 224)
            if isinstance(size, int):
                shortest = size
            elif "shortest_edge" in size:
                shortest = int(size["shortest_edge"])
            else:
                exact = (int(size["height"]), int(size["width"]))
        crop = None
        if config.get("do_center_crop", False):
            crop_size = config.get("crop_size", shortest or 224)
            crop = (
                (crop_size, crop_size)
                if isinstance(crop_size, int)
                else (int(crop_size["height"]), int(crop_size["width"]))
            )
        normalise = config.get("do_normalize", True)
        return cls(
            shortest_edge=shortest,
            size=exact,
            crop=crop,
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            scale=float(config.get("rescale_factor", 1 / 255))
            if config.get("do_rescale", True)
            else 1.0,
            mean=tuple(config.get("image_mean", OPENAI_CLIP_MEAN)) if normalise else (0.0,) * 3,
            std=tuple(config.get("image_std", OPENAI_CLIP_STD)) if normalise else (1.0,) * 3,
        )

    @classmethod
    def open_clip(cls, config: Mapping[str, Any]) -> PixelRecipe:
        """open_clip's preprocess config as Immich's layout keeps it (visual/preprocess_cfg.json),
        cropped as Immich crops (the offset floored)."""
        return dataclasses.replace(cls._jina(config), round_crop=False)

    @classmethod
    def _jina(cls, config: Mapping[str, Any]) -> PixelRecipe:
        """jina-clip's processor (open_clip's image_transform): `shortest` resizes the shorter
        side and crops the centre square; `squash` resizes to the square."""
        size = config.get("size", 224)
        size = int(size[0] if isinstance(size, list) else size)
        mode = config.get("resize_mode", "shortest")
        if mode not in ("shortest", "squash"):
            raise ValueError(f"preprocess config: resize_mode '{mode}' is not supported")
        interpolation = str(config.get("interpolation", "bicubic")).lower()
        if interpolation not in RESAMPLING:
            raise ValueError(f"preprocess config: interpolation '{interpolation}' is not known")
        return cls(
            shortest_edge=size if mode == "shortest" else None,
            size=(size, size) if mode == "squash" else None,
            crop=(size, size) if mode == "shortest" else None,
            resample=RESAMPLING[interpolation],
            scale=1 / 255,
            mean=tuple(config.get("mean", OPENAI_CLIP_MEAN)),
            std=tuple(config.get("std", OPENAI_CLIP_STD)),
            round_crop=True,
        )

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """A float32 batch (n, 3, height, width), normalised."""
        batch = np.stack([self._pixels(image) for image in images])
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, 3, 1, 1)
        return (batch * np.float32(self.scale) - mean) / std

    def _pixels(self, image: Image.Image) -> np.ndarray:
        image = image.convert("RGB")
        if self.shortest_edge is not None:
            image = image.resize(shortest_edge_size(image.size, self.shortest_edge), self.resample)
        elif self.size is not None:
            image = image.resize((self.size[1], self.size[0]), self.resample)
        if self.crop is not None:
            image = self._centre(image, *self.crop)
        return np.asarray(image, dtype=np.float32).transpose(2, 0, 1)

    def _centre(self, image: Image.Image, height: int, width: int) -> Image.Image:
        if self.round_crop:
            top = int(round((image.height - height) / 2.0))
            left = int(round((image.width - width) / 2.0))
        else:
            top, left = (image.height - height) // 2, (image.width - width) // 2
        # PIL pads with black where the crop is larger than the image, as both libraries do.
        return image.crop((left, top, left + width, top + height))


def shortest_edge_size(size: tuple[int, int], edge: int) -> tuple[int, int]:
    """(width, height) with the shorter side `edge` and the aspect ratio kept, the longer
    side truncated as transformers and torchvision both do."""
    width, height = size
    if width <= height:
        return edge, int(edge * height / width)
    return int(edge * width / height), edge


# ---------------------------------------------------------------- texts


class TextTokenizer:
    """A tokenizer.json run by the `tokenizers` library: ids and attention mask, padded to the
    longest text (or to `max_length`, as SigLIP was trained) and cut at `max_length`."""

    def __init__(
        self, path: Path, max_length: int, pad_token: str | None, pad_to_max_length: bool = False
    ) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        pad_id = self._tokenizer.token_to_id(pad_token) if pad_token else None
        self._tokenizer.enable_padding(
            pad_id=pad_id or 0,
            pad_token=pad_token or "[PAD]",
            length=max_length if pad_to_max_length else None,
        )

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The ids and mask; the ids also as `text`, the name open_clip's graphs give them."""
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask, "text": ids}


def pad_token_of(folder: Path) -> str | None:
    """The pad token named by tokenizer_config.json or special_tokens_map.json, if any."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            token = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
            if isinstance(token, Mapping):
                token = token.get("content")
            if isinstance(token, str):
                return token
    return None


# ---------------------------------------------------------------- the model


class OnnxModel:
    """An EmbeddingModel made of an image tower and a text tower in ONNX Runtime."""

    def __init__(
        self,
        name: str,
        image: Tower,
        text: Tower,
        pixels: PixelRecipe,
        tokenizer: TextTokenizer,
        query_prefix: str = "",
        clean_text: Callable[[str], str] | None = None,
    ) -> None:
        self.name = name
        self._image = image
        self._text = text
        self._pixels = pixels
        self._tokenizer = tokenizer
        self._query_prefix = query_prefix
        self._clean_text = clean_text or (lambda text: text)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        (pixels_input,) = self._image.input_names()
        return self._image.run({pixels_input: self._pixels(images)})

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        texts = [self._query_prefix + self._clean_text(t) for t in texts]
        return self._text.run(self._tokenizer(texts))
