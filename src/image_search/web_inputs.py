"""What the page and its API accept. Every input is read here before anything runs; a wrong
one gets a message that names the field by its label on the page ("Taken on or after: ..."),
shown next to that field (Gradio's event validator) or, from the API, as the error."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr

from .errors import ConfigError
from .query import build_filters, parse_date
from .store import Filters
from .web_files import unusable_path

MAX_TOP_K = 100
TOP_K_LABEL = "How many results (top-k)"
TEXT_LABEL = "…or describe it in words"
BUT_NOT_LABEL = "…but not"
WORDS_LABEL = "Words in the photo"
SELECTED_WORDS_LABEL = "Text found in this photo"
TEXT_WEIGHT_LABEL = "Weight of the words when an image is given too"
UNDER_LABEL = "Only files under these folders (one per line)"
AFTER_LABEL = "Taken on or after"
BEFORE_LABEL = "Taken before"
MIN_SCORE_LABEL = "Lowest score (0: any)"
PATH_LABEL = "Selected result: full path"
THRESHOLD_LABEL = "How alike (cosine similarity)"
DUPLICATE_UNDER_LABEL = "Only under these folders (one per line)"
BUT_NOT_CANCELS = (
    f"{BUT_NOT_LABEL}: takes away all that the query asks for (the same words as the text, "
    "with the same weight): change the words, or give them a smaller weight (0.5:…)"
)
UNUSABLE_PATH = "{label}: not a usable path ({why})"
NO_SUCH_FOLDER = "{label}: no such folder: {folder}"


class Inputs:
    """Reads inputs one by one, keeping the first problem of each (by parameter name)."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}

    def text(self, name: str, label: str, value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            return self._problem(name, f"{label}: expected text, got {_shown(value)}", "")
        return value

    def number(
        self, name: str, label: str, value: Any, low: float, high: float, default: float
    ) -> float:
        """A number in [low, high]; None gives `default`."""
        if value is None:
            return default
        wrong = f"{label}: expected a number from {low:g} to {high:g}, got {_shown(value)}"
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return self._problem(name, wrong, default)
        if not low <= value <= high:
            return self._problem(name, wrong, default)
        return float(value)

    def path(self, name: str, label: str, value: Any) -> str:
        """A path typed or sent by a client: text that can name a file here (no NUL byte,
        nothing that cannot be written as a file name, not over PATH_MAX)."""
        text = self.text(name, label, value).strip()
        if why := unusable_path(text):
            return self._problem(name, UNUSABLE_PATH.format(label=label, why=why), "")
        return text

    def folders(self, name: str, label: str, value: Any) -> list[str]:
        """Folders typed one per line; each a usable path of a folder that exists."""
        folders = folders_of(self.text(name, label, value))
        for folder in folders:
            if why := unusable_path(folder):
                return self._problem(name, UNUSABLE_PATH.format(label=label, why=why), [])
            if not os.path.isdir(os.path.expanduser(folder)):
                return self._problem(name, NO_SUCH_FOLDER.format(label=label, folder=folder), [])
        return folders

    def date(self, name: str, label: str, value: Any) -> datetime | None:
        text = self.text(name, label, value).strip()
        if not text:
            return None
        try:
            return parse_date(label, text)
        except ConfigError as exc:
            return self._problem(name, str(exc), None)
        except ValueError:  # a form parse_date lets through but is no date ("2024-13")
            message = f"{label}: expected a date like 2024-05-31, got {text!r}"
            return self._problem(name, message, None)

    def filters(
        self, under: Any, after: Any, before: Any, min_score: Any, roots: Sequence[Path] = ()
    ) -> Filters:
        """The filter controls (named under, taken_after, taken_before, min_score); `roots`
        as for query.build_filters (the folders any spelling of an `under` folder is
        matched in)."""
        folders = self.folders("under", UNDER_LABEL, under)
        start = self.date("taken_after", AFTER_LABEL, after)
        end = self.date("taken_before", BEFORE_LABEL, before)
        if start is not None and end is not None and start >= end:
            self._problem(
                "taken_before",
                f"{BEFORE_LABEL}: must be later than {AFTER_LABEL} ({start:%Y-%m-%d %H:%M}); "
                "no photo can match both",
                None,
            )
        score = self.number("min_score", MIN_SCORE_LABEL, min_score, -1, 1, 0)
        if self.problems:
            return Filters()
        return build_filters(  # a lowest score of 0: none
            folders, _iso(start), _iso(end), score or None, prefix="", roots=roots
        )

    def add(self, name: str, message: str) -> None:
        """A problem found outside these readers, shown next to the field `name`."""
        self._problem(name, message, None)

    def _problem(self, name: str, message: str, fallback: Any) -> Any:
        self.problems.setdefault(name, message)
        return fallback

    def message(self) -> str:
        """All problems as one message (for the API and the log)."""
        return "; ".join(self.problems.values())

    def validations(self, fn: Callable[..., Any]) -> list[dict]:
        """One gr.validate per parameter of `fn` (the event's inputs, in order; `request` is
        Gradio's gr.Request, no input)."""
        names = [name for name in inspect.signature(fn).parameters if name != "request"]
        problems = self.problems
        return [gr.validate(name not in problems, problems.get(name, "")) for name in names]


@dataclass(frozen=True)
class SearchInputs:
    top_k: int
    filters: Filters


def read_search_inputs(
    inputs: Inputs,
    top_k: Any,
    default_k: int,
    under: Any,
    taken_after: Any,
    taken_before: Any,
    min_score: Any,
    roots: Sequence[Path] = (),
) -> SearchInputs:
    """The inputs that a search and Find similar share."""
    k = inputs.number("top_k", TOP_K_LABEL, top_k, 1, MAX_TOP_K, default_k)
    filters = inputs.filters(under, taken_after, taken_before, min_score, roots)
    return SearchInputs(int(k), filters)


def folders_of(text: str | None) -> list[str]:
    """Folders typed one per line (a folder name may hold any other character)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
