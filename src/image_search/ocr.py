"""Reading the words in a photo: PP-OCRv4's text detector and its recogniser (Chinese and
English), the ONNX graphs that the `rapidocr-onnxruntime` wheel carries, run by ONNX Runtime
with numpy and Pillow around them. That package's own code needs OpenCV (about 290 MB
installed); only its graph files are used here, so nothing is fetched at run time and OpenCV
is not needed.

The detector marks where text is on a probability map (DB: differentiable binarisation);
each region becomes a rotated box, cut out upright and read by the recogniser (CTC). A photo
without text costs one pass of the detector, at most DETECT_SIDE pixels on its longer side;
lines are read from the full processed image. The direction classifier that PaddleOCR puts
between the two (it turns upside-down lines) is left out: BENCHMARKS.md, section t."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .errors import ImageSearchError

log = logging.getLogger(__name__)

MODELS_PACKAGE = "rapidocr_onnxruntime"
DETECTOR_FILE = "ch_PP-OCRv4_det_infer.onnx"
RECOGNISER_FILE = "ch_PP-OCRv4_rec_infer.onnx"
# What read a photo's words, stored with them: words read by another engine (or with other
# settings that change what is read) are read again by the next index run.
ENGINE = "PP-OCRv4 det960 rec48"
MISSING_MODELS = (
    "reading words in photos needs the OCR models of the rapidocr-onnxruntime package, which "
    "is not installed (it supports Python 3.12 and older): install it with "
    "'pip install rapidocr-onnxruntime --no-deps', or set the key ocr to false"
)

# The detector's input: the longer side at most this many pixels (a multiple of 32). The
# default processed JPEG (960x540) is read at its own size.
DETECT_SIDE = 960
# DB post-processing, PaddleOCR's defaults: probability threshold, a region's lowest mean
# probability, how far a region's box is grown (the map marks the text's core), the
# shortest box side kept, and at most this many regions per photo.
PIXEL_THRESHOLD = 0.3
BOX_THRESHOLD = 0.5
UNCLIP_RATIO = 1.6
MIN_BOX_SIDE = 3
MAX_REGIONS = 1000
# The recogniser's input: lines scaled to this height, batches of lines of like width.
LINE_HEIGHT = 48
MIN_LINE_WIDTH = 320
LINES_PER_BATCH = 6
# A line read with a lower mean character confidence is dropped (mostly texture read as a
# letter or two).
MIN_CONFIDENCE = 0.5


@dataclass(frozen=True)
class Line:
    """One line of text found in a photo: what it says, how sure the recogniser is (0-1, the
    mean of its characters'), and its four corners in the processed image's pixels
    (clockwise from the top left)."""

    text: str
    confidence: float
    box: tuple[tuple[int, int], ...]

    def record(self) -> dict[str, Any]:
        return {"text": self.text, "confidence": round(self.confidence, 4), "box": self.box}


def models_folder() -> Path | None:
    """Where the wheel keeps its graphs, found without importing the package (its own code
    imports OpenCV); None when it is not installed."""
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    if not (folder / DETECTOR_FILE).is_file() or not (folder / RECOGNISER_FILE).is_file():
        return None
    return folder


def available() -> bool:
    return models_folder() is not None


def engine_name(recogniser: Path | None = None) -> str:
    """ENGINE, or with another recogniser (the ocr-recogniser key) its name and a digest of
    its bytes, so that words it reads replace those of the bundled one."""
    if recogniser is None:
        return ENGINE
    try:
        digest = hashlib.sha256(recogniser.read_bytes()).hexdigest()[:12]
    except OSError:
        digest = "missing"
    return f"{ENGINE} rec:{recogniser.name}:{digest}"


def alphabet_of(graph: Path, session: Any) -> list[str]:
    """A recogniser's characters: from its graph's metadata (`character`, as RapidOCR's
    conversions store it), else from a text file beside it of the same name, one character a
    line (PaddleOCR's dictionaries)."""
    meta = session.get_modelmeta().custom_metadata_map
    if "character" in meta:
        return meta["character"].splitlines()
    listing = graph.with_suffix(".txt")
    if not listing.is_file():
        raise ImageSearchError(
            f"configuration key 'ocr-recogniser' ({graph}): the graph names no characters; "
            f"put its dictionary beside it as {listing.name} (one character a line)"
        )
    lines = listing.read_text(encoding="utf-8").split("\n")
    if lines and not lines[-1]:
        lines.pop()  # the file's last line end
    return [line.removesuffix("\r") for line in lines]


class TextReader:
    """Reads the lines of text in images. The graphs are loaded on first use (or by `load`);
    once loaded, several threads may read at once. `recogniser`: another recogniser graph
    than the bundled Chinese + English one (the ocr-recogniser key)."""

    def __init__(
        self,
        threads: int | None = None,
        detect_side: int = DETECT_SIDE,
        recogniser: Path | None = None,
        device: str = "cpu",
    ) -> None:
        self.threads = threads
        self.device = device  # "cuda": ONNX Runtime's CUDA provider (the gpu extra)
        self.detect_side = detect_side
        self.recogniser_file = recogniser
        self.engine = engine_name(recogniser)
        self._detector: Any = None
        self._recogniser: Any = None
        self._characters: list[str] = []
        self._lock = threading.Lock()

    def load(self) -> None:
        """Open both graphs; an ImageSearchError when they are not installed."""
        with self._lock:
            if self._detector is not None:
                return
            folder = models_folder()
            if folder is None:
                raise ImageSearchError(MISSING_MODELS)
            from .models.onnx_runtime import open_session

            graph = self.recogniser_file or folder / RECOGNISER_FILE
            if not graph.is_file():
                raise ImageSearchError(
                    f"configuration key 'ocr-recogniser': {graph} is not a file"
                )
            recogniser = open_session(graph, self.device, threads=self.threads)
            # CTC's blank first, the graph's own alphabet, then the space it was trained with.
            self._characters = ["", *alphabet_of(graph, recogniser), " "]
            self._recogniser = recogniser
            detector = folder / DETECTOR_FILE
            self._detector = open_session(detector, self.device, threads=self.threads)

    def read(self, image: Image.Image) -> list[Line]:
        """The lines of text in `image`, top to bottom, left to right."""
        self.load()
        # PaddleOCR's graphs were trained on OpenCV's channel order (BGR).
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        boxes = self._detect(pixels)
        if not boxes:
            return []
        crops = [upright_crop(pixels, box) for box in boxes]
        lines = []
        for box, (text, confidence) in zip(boxes, self._recognise(crops), strict=True):
            text = text.strip()
            if confidence >= MIN_CONFIDENCE and any(c.isalnum() for c in text):
                corners = tuple((int(x), int(y)) for x, y in box)
                lines.append(Line(text, confidence, corners))
        return lines

    # -- detection ----------------------------------------------------------

    def _detect(self, pixels: np.ndarray) -> list[np.ndarray]:
        height, width = pixels.shape[:2]
        scale = min(1.0, self.detect_side / max(height, width))
        size_h = max(32, round(height * scale / 32) * 32)
        size_w = max(32, round(width * scale / 32) * 32)
        resized = Image.fromarray(pixels).resize((size_w, size_h), Image.Resampling.BILINEAR)
        tensor = (np.asarray(resized, dtype=np.float32) / 255.0 - 0.5) / 0.5
        tensor = tensor.transpose(2, 0, 1)[np.newaxis]
        name = self._detector.get_inputs()[0].name
        probability = self._detector.run(None, {name: tensor})[0][0, 0]
        boxes = regions_to_boxes(probability, width, height)
        return sort_boxes(boxes)

    # -- recognition --------------------------------------------------------

    def _recognise(self, crops: Sequence[np.ndarray]) -> list[tuple[str, float]]:
        """Text and confidence of each crop; crops of like width share a batch (less
        padding)."""
        ratios = [crop.shape[1] / crop.shape[0] for crop in crops]
        order = np.argsort(ratios)
        results: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        name = self._recogniser.get_inputs()[0].name
        for start in range(0, len(crops), LINES_PER_BATCH):
            chosen = order[start : start + LINES_PER_BATCH]
            widest = max(MIN_LINE_WIDTH / LINE_HEIGHT, *(ratios[i] for i in chosen))
            width = int(LINE_HEIGHT * widest)
            batch = np.stack([line_tensor(crops[i], width) for i in chosen])
            scores = self._recogniser.run(None, {name: batch})[0]
            for i, decoded in zip(chosen, self._decode(scores), strict=True):
                results[i] = decoded
        return results

    def _decode(self, scores: np.ndarray) -> list[tuple[str, float]]:
        """CTC greedy decoding: the best character at each step, repeats merged, blanks
        dropped; the confidence is the mean probability of the characters kept."""
        best = scores.argmax(axis=2)
        probability = scores.max(axis=2)
        decoded = []
        for indices, chances in zip(best, probability, strict=True):
            keep = np.ones(len(indices), dtype=bool)
            keep[1:] = indices[1:] != indices[:-1]
            keep &= indices != 0
            text = "".join(self._characters[i] for i in indices[keep])
            decoded.append((text, float(chances[keep].mean()) if keep.any() else 0.0))
        return decoded


# ---------------------------------------------------------------- DB post-processing


def regions_to_boxes(probability: np.ndarray, width: int, height: int) -> list[np.ndarray]:
    """The detector's probability map as text boxes (4x2 corners, clockwise from the top
    left) in the pixels of an image `width` x `height`."""
    mask = probability > PIXEL_THRESHOLD
    # A 2x2 dilation, as PaddleOCR's: it joins the letters of a line split by one pixel.
    grown = mask.copy()
    grown[1:, :] |= mask[:-1, :]
    grown[:, 1:] |= mask[:, :-1]
    grown[1:, 1:] |= mask[:-1, :-1]
    map_height, map_width = mask.shape
    boxes = []
    for points in connected_regions(grown)[:MAX_REGIONS]:
        corners, short_side = min_area_rect(points)
        if short_side < MIN_BOX_SIDE:
            continue
        if box_score(probability, corners) < BOX_THRESHOLD:
            continue
        corners, short_side = grown_rect(corners, UNCLIP_RATIO)
        if short_side < MIN_BOX_SIDE + 2:
            continue
        corners[:, 0] = np.clip(np.round(corners[:, 0] / map_width * width), 0, width - 1)
        corners[:, 1] = np.clip(np.round(corners[:, 1] / map_height * height), 0, height - 1)
        box = clockwise(corners)
        if np.linalg.norm(box[0] - box[1]) > 3 and np.linalg.norm(box[0] - box[3]) > 3:
            boxes.append(box)
    return boxes


def connected_regions(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected regions of a boolean mask, each as the (x, y) points that bound it
    (the first and last pixel of each of its runs along a row), largest first. Runs are
    joined row to row with a union-find: a text map has few runs, so this stays fast
    without an image library."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    ends = ends - 1  # inclusive
    count = len(rows)
    if not count:
        return []
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for y in range(mask.shape[0] - 1):
        above, below = range(first[y], first[y + 1]), range(first[y + 1], first[y + 2])
        i, j = above.start, below.start
        while i < above.stop and j < below.stop:
            if starts[i] <= ends[j] + 1 and starts[j] <= ends[i] + 1:  # touching, diagonals too
                a, b = root(i), root(j)
                if a != b:
                    parent[b] = a
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    groups: dict[int, list[int]] = {}
    for i in range(count):
        groups.setdefault(root(i), []).append(i)
    regions = []
    for members in groups.values():
        index = np.array(members)
        xs = np.concatenate([starts[index], ends[index]])
        ys = np.concatenate([rows[index], rows[index]])
        regions.append(np.stack([xs, ys], axis=1).astype(np.float64))
    regions.sort(key=len, reverse=True)
    return regions


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain: the hull's corners, counter-clockwise."""
    unique = np.unique(points, axis=0)
    if len(unique) < 3:
        return unique

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(ordered: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for point in ordered:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], point) <= 0:
                chain.pop()
            chain.append(point)
        return chain

    lower, upper = half(unique), half(unique[::-1])
    return np.array(lower[:-1] + upper[:-1])


def min_area_rect(points: np.ndarray) -> tuple[np.ndarray, float]:
    """The smallest rotated rectangle around `points` (its four corners) and its shorter
    side: one of its sides lies along an edge of the convex hull."""
    hull = convex_hull(points)
    if len(hull) < 3:
        low, high = hull.min(axis=0), hull.max(axis=0)
        corners = np.array([low, [high[0], low[1]], high, [low[0], high[1]]], dtype=np.float64)
        return corners, float(min(high - low))
    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.linalg.norm(edges, axis=1)
    along = edges[lengths > 0] / lengths[lengths > 0, None]
    across = np.stack([-along[:, 1], along[:, 0]], axis=1)
    on_along, on_across = hull @ along.T, hull @ across.T  # (points, directions)
    spans_along = on_along.max(axis=0) - on_along.min(axis=0)
    spans_across = on_across.max(axis=0) - on_across.min(axis=0)
    best = int(np.argmin(spans_along * spans_across))
    u, v = along[best], across[best]
    low_u, high_u = on_along[:, best].min(), on_along[:, best].max()
    low_v, high_v = on_across[:, best].min(), on_across[:, best].max()
    corners = np.array(
        [low_u * u + low_v * v, high_u * u + low_v * v, high_u * u + high_v * v,
         low_u * u + high_v * v]
    )
    return corners, float(min(spans_along[best], spans_across[best]))


def grown_rect(corners: np.ndarray, ratio: float) -> tuple[np.ndarray, float]:
    """A rectangle grown on every side by area * ratio / perimeter (DB's "unclip": the map
    marks a shrunk core of each line), and its shorter side."""
    side_a = corners[1] - corners[0]
    side_b = corners[3] - corners[0]
    length_a, length_b = np.linalg.norm(side_a), np.linalg.norm(side_b)
    if not length_a or not length_b:
        return corners, 0.0
    distance = length_a * length_b * ratio / (2 * (length_a + length_b))
    u, v = side_a / length_a, side_b / length_b
    centre = corners.mean(axis=0)
    half_a, half_b = length_a / 2 + distance, length_b / 2 + distance
    grown = np.array(
        [centre - half_a * u - half_b * v, centre + half_a * u - half_b * v,
         centre + half_a * u + half_b * v, centre - half_a * u + half_b * v]
    )
    return grown, float(2 * min(half_a, half_b))


def box_score(probability: np.ndarray, corners: np.ndarray) -> float:
    """The mean probability inside the box."""
    height, width = probability.shape
    low = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, [width - 1, height - 1])
    high = np.clip(np.ceil(corners.max(axis=0)).astype(int), 0, [width - 1, height - 1])
    size = high - low + 1
    mask = Image.new("L", (int(size[0]), int(size[1])), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in (corners - low).round()], fill=1)
    inside = np.asarray(mask, dtype=bool)
    region = probability[low[1] : high[1] + 1, low[0] : high[0] + 1]
    return float(region[inside].mean()) if inside.any() else 0.0


def clockwise(corners: np.ndarray) -> np.ndarray:
    """Four corners as top left, top right, bottom right, bottom left."""
    by_x = corners[np.argsort(corners[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def sort_boxes(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom; boxes whose tops are within 10 pixels count as one row, left to right."""
    ordered = sorted(boxes, key=lambda box: (box[0][1], box[0][0]))
    for i in range(len(ordered) - 1):
        for j in range(i, -1, -1):
            nxt, cur = ordered[j + 1], ordered[j]
            if abs(nxt[0][1] - cur[0][1]) < 10 and nxt[0][0] < cur[0][0]:
                ordered[j], ordered[j + 1] = nxt, cur
            else:
                break
    return ordered


# ---------------------------------------------------------------- recognition input


def upright_crop(pixels: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The box cut out as an upright rectangle (a tall one turned a quarter, as a vertical
    line is read left to right)."""
    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    width, height = max(width, 1), max(height, 1)
    # Pillow's QUAD takes the source corners top left, bottom left, bottom right, top right.
    quad = [float(c) for i in (0, 3, 2, 1) for c in box[i]]
    crop = Image.fromarray(pixels).transform(
        (width, height), Image.Transform.QUAD, quad, resample=Image.Resampling.BICUBIC
    )
    array = np.asarray(crop)
    return np.rot90(array) if height / width >= 1.5 else array


def line_tensor(crop: np.ndarray, width: int) -> np.ndarray:
    """A crop scaled to LINE_HEIGHT (its aspect kept, at most `width`), normalised to -1..1,
    channels first, padded on the right to `width`."""
    height, own_width = crop.shape[:2]
    scaled = min(width, math.ceil(LINE_HEIGHT * own_width / height))
    image = Image.fromarray(np.ascontiguousarray(crop)).resize(
        (scaled, LINE_HEIGHT), Image.Resampling.BILINEAR
    )
    tensor = np.zeros((3, LINE_HEIGHT, width), dtype=np.float32)
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
    tensor[:, :, :scaled] = (pixels / 255 - 0.5) / 0.5
    return tensor
