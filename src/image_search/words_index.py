"""The words in photos at index time (the `ocr` key): read in the batch step of either
executor for contents new to the database, and, at the end of a run, read from the stored
processed JPEGs of photos indexed before (or by another OCR engine), with a bar of their own;
words no photo holds any more are dropped. The words are stored by content
(store/words.py), so a moved or copied photo is never read twice."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from .config import Settings
from .ocr import MISSING_MODELS, TextReader, available
from .pipeline import Prepared
from .store import Store
from .store.words import ReadWords, TableWords
from .words import normalise

log = logging.getLogger(__name__)

# Stored photos read per transaction when words are filled in (a stopped run keeps them).
FILL_BATCH = 16
_warned_missing = False


def ocr_wanted(settings: Settings) -> bool:
    """The ocr key, where the models are installed; else a warning, once per process."""
    global _warned_missing
    if not settings.ocr:
        return False
    if available():
        return True
    if not _warned_missing:
        _warned_missing = True
        log.warning("words in photos are not read: %s", MISSING_MODELS)
    return False


class PhotoWords:
    """Reads the words of a batch's contents that the database has no words for yet, and
    stores them. One per executor's batch step (a Ray actor has its own)."""

    def __init__(self, store: Store, reader: TextReader) -> None:
        self.words = TableWords(store.database, store.table)
        self.reader = reader

    def read(self, batch: Sequence[Prepared]) -> list[ReadWords]:
        unique = {p.image.content_hash: p for p in batch}
        known = self.words.known(unique, self.reader.engine)
        return [
            words_of(digest, self.reader, as_pillow(p.image.image))
            for digest, p in unique.items()
            if digest not in known
        ]

    def write(self, read: Sequence[ReadWords]) -> None:
        self.words.write(read, self.reader.engine)


def photo_words(settings: Settings, store: Store, threads: int | None = None) -> PhotoWords | None:
    """The batch step's reader of words, or None (ocr off, or no models)."""
    if not ocr_wanted(settings):
        return None
    return PhotoWords(store, reader_for(settings, threads))


def ocr_device(requested: str) -> str:
    """CUDA where ONNX Runtime has it (the gpu extra) and a CUDA GPU may be used, quietly
    (the model's own device settles what is said about absent accelerators); else the CPU."""
    from .models.precision import system_hardware

    hardware = system_hardware()
    cuda = requested in ("auto", "cuda") and hardware.nvidia_driver and hardware.onnx_cuda
    return "cuda" if cuda else "cpu"


def reader_for(settings: Settings, threads: int | None = None) -> TextReader:
    """The reader the settings ask for: the batch step's and the run's end's are one."""
    return shared_reader(threads, settings.ocr_recogniser, ocr_device(settings.device))


@functools.cache
def shared_reader(
    threads: int | None = None, recogniser: Path | None = None, device: str = "cpu"
) -> TextReader:
    """One reader per process (and settings): its graphs load once, not at every run (a
    Rescan, `index --watch`). Reading is safe from several threads."""
    graph = recogniser.absolute() if recogniser else None
    return TextReader(threads, recogniser=graph, device=device)


def words_of(content_hash: str, reader: TextReader, image: Image.Image) -> ReadWords:
    lines = reader.read(image)
    text = normalise(" ".join(line.text for line in lines))
    return ReadWords(content_hash, [line.record() for line in lines], text)


def as_pillow(image: Any) -> Image.Image:
    """A prepared image as Pillow holds it (the GPU path hands over CHW tensors)."""
    if isinstance(image, Image.Image):
        return image
    from .models.tensor_pixels import to_pil

    return to_pil(image)


def prepare_words_table(settings: Settings, store: Store) -> None:
    """Before the run's work: the table the batch steps write to (on Ray, other processes)."""
    if settings.ocr:
        TableWords(store.database, store.table).ensure()


def fill_words(
    settings: Settings,
    store: Store,
    show_bar: bool,
    told: Callable[[int, int], None] | None,
    check_stop: Callable[[], None],
    *,
    rows_dropped: bool,
) -> int:
    """Read the words of stored photos that have none (indexed before ocr was on, or read by
    another engine) from their processed JPEGs; drop words no photo holds, where the run
    dropped rows (`rows_dropped`: removed, or updated to new content). The number of photos
    read. `told(done, total)` follows it; `check_stop` may end it between batches (what was
    read is kept)."""
    words = TableWords(store.database, store.table)
    if not ocr_wanted(settings):
        if rows_dropped:
            words.purge()
        return 0
    reader = reader_for(settings)
    unread = words.unread(reader.engine)
    done, missing = 0, 0
    if unread:
        reader.load()
        bar = tqdm(total=len(unread), desc="Reading words", unit="img", disable=not show_bar)
        with bar:
            for start in range(0, len(unread), FILL_BATCH):
                check_stop()
                read, chunk = [], unread[start : start + FILL_BATCH]
                for item in chunk:
                    image = stored_image(item.processed_path)
                    if image is None:
                        missing += 1
                    else:
                        read.append(words_of(item.content_hash, reader, image))
                words.write(read, reader.engine)
                done += len(read)
                bar.update(len(chunk))
                if told:
                    told(start + len(chunk), len(unread))
    if missing:
        log.warning(
            "words not read for %d photos whose processed JPEGs are gone; "
            "`image-search index --reindex` makes them again",
            missing,
        )
    if rows_dropped:
        words.purge()
    return done


def stored_image(processed_path: str) -> Image.Image | None:
    """A stored processed JPEG (written by image-search: small, and trusted as such), or
    None when it cannot be read."""
    try:
        with Image.open(processed_path) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", processed_path, exc)
        return None
