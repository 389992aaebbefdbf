"""Near-identical images: each image's nearest neighbours through the HNSW index, joined into
connected groups, then split around the one to keep (every member at least `threshold` alike
to it; whole chains on request). Nothing is ever deleted or moved."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from .errors import ConfigError, ImageError, ImageSearchError
from .missing import all_missing
from .scan import display_path
from .store import NO_FILTERS, Filters, Store, StoredImage

DEFAULT_THRESHOLD = 0.95
# Neighbours asked of the index per image. A group larger than this is still found whole
# when its members are linked in a chain, as burst shots are.
NEIGHBOURS = 10
# The rows are searched in this many parts at once, each on its own database connection (a
# server process each): the index scans are CPU work in the server.
SEARCH_PARTS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Member:
    image: StoredImage
    pixels: int  # of the original file; 0 when it cannot be read
    score: float  # cosine similarity to the group's first file

    def to_json(self) -> dict[str, Any]:
        return {
            "file_path": display_path(self.image.file_path),
            "file_name": display_path(self.image.file_name),
            "score": self.score,
        }


@dataclass(frozen=True)
class Group:
    members: list[Member]  # the one to keep first

    def to_json(self) -> dict[str, Any]:
        return {"files": [member.to_json() for member in self.members]}


@dataclass(frozen=True)
class DuplicateReport:
    threshold: float
    groups: list[Group]

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "groups": [group.to_json() for group in self.groups]}


def check_threshold(threshold: float, name: str = "--threshold") -> None:
    if not 0 < threshold <= 1:
        raise ConfigError(f"{name} must be above 0 and at most 1, got {threshold}")


def find_duplicates(
    store: Store,
    threshold: float = DEFAULT_THRESHOLD,
    filters: Filters = NO_FILTERS,
    neighbours: int = NEIGHBOURS,
    chain: bool = False,
) -> DuplicateReport:
    """Groups of stored images at least `threshold` alike (cosine similarity), among the
    images that pass `filters`: the k nearest of each image by the index, the connected
    groups of those pairs, and each of those split around the one to keep (most pixels, then
    oldest) so that every member is at least `threshold` alike to it. With `chain` the
    connected groups are kept whole (a burst: each shot like the next, the last maybe not
    like the first)."""
    check_threshold(threshold)
    info = store.info()
    if info is None or info.images == 0:
        raise ImageSearchError(
            all_missing(store.table, info)
            or f"no images are indexed in table '{store.table}' yet; run `image-search index` first"
        )
    pairs = store.rows.close_pairs(threshold, neighbours, filters, parts=SEARCH_PARTS)
    components = connected_groups((a, b) for a, b, _ in pairs)
    images = {image.id: image for image in store.rows.images([i for c in components for i in c])}
    pixels = {i: pixel_count(image.file_path) for i, image in images.items()}
    groups: list[Group] = []
    for component in components:
        members = [images[i] for i in component]
        if chain:
            groups.append(ordered_group(members, pixels))
        else:
            groups += around_keepers(members, pixels, threshold)
    groups.sort(key=lambda group: (-len(group.members), group.members[0].image.file_path))
    return DuplicateReport(threshold, groups)


def around_keepers(
    images: list[StoredImage], pixels: dict[int, int], threshold: float
) -> list[Group]:
    """Connected images split into groups each at least `threshold` alike to its first: the
    best to keep takes every image alike enough to it, then the best of the rest, and so on.
    An image left without a partner is in no group."""
    left = sorted(images, key=lambda image: keep_order(image, pixels[image.id]))
    groups = []
    while len(left) > 1:
        keep, rest = left[0], left[1:]
        alike = [i for i in rest if similarity(i.embedding, keep.embedding) >= threshold]
        if alike:
            groups.append(ordered_group([keep, *alike], pixels))
        taken = {image.id for image in alike}
        left = [image for image in rest if image.id not in taken]
    return groups


def connected_groups(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected components (two or more ids) of the graph these pairs are edges of."""
    parent: dict[int, int] = {}

    def root(node: int) -> int:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]  # path halving
            node = parent[node]
        return node

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    components: dict[int, list[int]] = {}
    for node in parent:
        components.setdefault(root(node), []).append(node)
    return [sorted(members) for members in components.values() if len(members) > 1]


def ordered_group(images: list[StoredImage], pixels: dict[int, int]) -> Group:
    """The one to keep first (most pixels, then the oldest capture date, then the oldest
    file), the others by their similarity to it."""
    keep = min(images, key=lambda image: keep_order(image, pixels[image.id]))

    def member(image: StoredImage) -> Member:
        return Member(image, pixels[image.id], similarity(image.embedding, keep.embedding))

    others = sorted(
        (member(image) for image in images if image is not keep),
        key=lambda m: (-m.score, keep_order(m.image, m.pixels)),
    )
    return Group([member(keep), *others])


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two stored unit vectors, to 6 decimals: float32 rounding would
    otherwise show a byte-identical copy as 0.99999994."""
    return min(1.0, round(float(np.dot(a.astype(np.float64), b.astype(np.float64))), 6))


def keep_order(image: StoredImage, pixels: int) -> tuple:
    """Sort key: smaller is better to keep."""
    taken = image.taken_at or datetime.max
    return (-pixels, taken, image.mtime_ns, image.file_path)


def pixel_count(path: str) -> int:
    """Width x height from the file's header (no decode; a RAW file's from LibRaw, a
    200-megapixel photo's past Pillow's own limit); 0 if it cannot be read."""
    from .images import image_size  # the decoders, for this command only

    try:
        width, height = image_size(path)
    except ImageError:  # a file gone or unreadable since it was indexed ranks last
        return 0
    return width * height


def report_lines(report: DuplicateReport) -> list[str]:
    """The report for a terminal: one block per group, the file to keep marked."""
    if not report.groups:
        return [f"No near-identical images (threshold {report.threshold:g})."]
    count = sum(len(group.members) for group in report.groups)
    lines = [
        f"{counted(len(report.groups), 'group')} of near-identical images, {count} files "
        f"(threshold {report.threshold:g}); the first of each group is the one to keep:"
    ]
    for group in report.groups:
        lines.append("")
        for position, member in enumerate(group.members):
            mark = "keep " if position == 0 else f"{member.score:.3f}"
            lines.append(f"  {mark}  {display_path(member.image.file_path)}")
    lines += ["", "Nothing was deleted or moved."]
    return lines


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
