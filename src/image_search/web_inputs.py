"""What the page and its API accept. Every input is read here before anything runs; a wrong
one gets a message that names the field by its label on the page ("Taken on or after: ..."),
in the language of the request (web_text), shown next to that field (Gradio's event
validator) or, from the API, as the error."""

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
from .web_text import ENGLISH, ENGLISH_LANGUAGE, label, message

MAX_TOP_K = 100
# Fields' labels in English, as an API client is told of them (web_text has them all).
BUT_NOT_LABEL = ENGLISH["but_not"]
TEXT_WEIGHT_LABEL = ENGLISH["text_weight"]
UNDER_LABEL = ENGLISH["under"]
AFTER_LABEL = ENGLISH["taken_after"]
PATH_LABEL = ENGLISH["selected_path"]
THRESHOLD_LABEL = ENGLISH["threshold"]
BUT_NOT_CANCELS = message("but_not_cancels", ENGLISH_LANGUAGE, label=BUT_NOT_LABEL)


class Inputs:
    """Reads inputs one by one, keeping the first problem of each (by parameter name). Each
    reader is given the field's key in web_text.TEXTS (`field`), and its messages name the
    field by its label in `language`."""

    def __init__(self, language: str = ENGLISH_LANGUAGE) -> None:
        self.language = language
        self.problems: dict[str, str] = {}

    def label(self, field: str) -> str:
        """The field's label on the page, in the language of the messages."""
        return label(field, self.language)

    def say(self, key: str, **values: Any) -> str:
        """A message of web_text.MESSAGES in the language of the messages."""
        return message(key, self.language, **values)

    def text(self, name: str, field: str, value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            wrong = self.say("expected_text", label=self.label(field), value=_shown(value))
            return self._problem(name, wrong, "")
        return value

    def number(
        self, name: str, field: str, value: Any, low: float, high: float, default: float
    ) -> float:
        """A number in [low, high]; None gives `default`."""
        if value is None:
            return default
        wrong = self.say(
            "expected_number",
            label=self.label(field),
            low=f"{low:g}",
            high=f"{high:g}",
            value=_shown(value),
        )
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return self._problem(name, wrong, default)
        if not low <= value <= high:
            return self._problem(name, wrong, default)
        return float(value)

    def path(self, name: str, field: str, value: Any) -> str:
        """A path typed or sent by a client: text that can name a file here (no NUL byte,
        nothing that cannot be written as a file name, not over PATH_MAX)."""
        text = self.text(name, field, value).strip()
        if why := unusable_path(text):
            wrong = self.say("unusable_path", label=self.label(field), why=why)
            return self._problem(name, wrong, "")
        return text

    def folders(self, name: str, field: str, value: Any) -> list[str]:
        """Folders typed one per line; each a usable path of a folder that exists."""
        folders = folders_of(self.text(name, field, value))
        for folder in folders:
            if why := unusable_path(folder):
                wrong = self.say("unusable_path", label=self.label(field), why=why)
                return self._problem(name, wrong, [])
            if not os.path.isdir(os.path.expanduser(folder)):
                wrong = self.say("no_such_folder", label=self.label(field), folder=folder)
                return self._problem(name, wrong, [])
        return folders

    def date(self, name: str, field: str, value: Any) -> datetime | None:
        text = self.text(name, field, value).strip()
        if not text:
            return None
        try:
            return parse_date(self.label(field), text)
        except ConfigError:
            wrong = self.say("expected_date", label=self.label(field), value=repr(text))
            return self._problem(name, wrong, None)
        except ValueError:  # a form parse_date lets through but is no date ("2024-13")
            wrong = self.say("no_such_date", label=self.label(field), value=repr(text))
            return self._problem(name, wrong, None)

    def filters(
        self, under: Any, after: Any, before: Any, min_score: Any, roots: Sequence[Path] = ()
    ) -> Filters:
        """The filter controls (named under, taken_after, taken_before, min_score); `roots`
        as for query.build_filters (the folders any spelling of an `under` folder is
        matched in)."""
        folders = self.folders("under", "under", under)
        start = self.date("taken_after", "taken_after", after)
        end = self.date("taken_before", "taken_before", before)
        if start is not None and end is not None and start >= end:
            wrong = self.say(
                "before_not_after",
                before=self.label("taken_before"),
                after=self.label("taken_after"),
                start=f"{start:%Y-%m-%d %H:%M}",
            )
            self._problem("taken_before", wrong, None)
        score = self.number("min_score", "min_score", min_score, -1, 1, 0)
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
    k = inputs.number("top_k", "top_k", top_k, 1, MAX_TOP_K, default_k)
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
