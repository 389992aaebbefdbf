"""What the page's handlers draw: Markdown-safe text, file links, duplicate groups, the best
match's caption and the Rescan bar, from the results and reports the stages return."""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .duplicates import DuplicateReport
from .errors import ImageSearchError, one_line
from .ingest import IndexReport
from .scan import display_path
from .web_text import ENGLISH_LANGUAGE, message, summary_words, ui

log = logging.getLogger(__name__)

# Duplicate groups drawn on the page at most (all of them are in the JSON below).
MAX_GROUPS_SHOWN = 200
# Skipped files a finished Rescan names at most; the rest are counted.
MAX_SKIPPED_SHOWN = 50


def markdown_text(text: str) -> str:
    """User text shown inside Markdown as typed, not as formatting."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~])", r"\\\1", text)


def file_url(path: str) -> str:
    """The page's address of a file Gradio may serve (behind the page's login, if any)."""
    return "gradio_api/file=" + quote(path)


def duplicates_html(
    report: DuplicateReport,
    thumbnail: Callable[[str], Path],
    language: str = ENGLISH_LANGUAGE,
) -> str:
    """Each group as a row of thumbnails (the processed JPEGs) with score and full path."""
    parts = []
    keep = html.escape(message("keep", language))
    for number, group in enumerate(report.groups[:MAX_GROUPS_SHOWN], start=1):
        figures = []
        for position, member in enumerate(group.members):
            label = keep if position == 0 else f"{member.score:.3f}"
            path = breakable_path(member.image.file_path)
            image = file_url(str(thumbnail(member.image.processed_path)))
            alt = html.escape(display_path(member.image.file_path))
            figures.append(
                f'<figure><img src="{html.escape(image)}" alt="{alt}" loading="lazy">'
                f"<figcaption><b>{label}</b> {path}</figcaption></figure>"
            )
        heading = html.escape(message("group", language, number=number))
        parts.append(f'<h4>{heading}</h4><div class="group">{"".join(figures)}</div>')
    return "".join(parts)


def breakable_path(path: str) -> str:
    """A path as HTML that a narrow box wraps after its separators, not inside a folder's
    or a file's name (not even at a hyphen): each part with its separator is a box of its
    own (PAGE_CSS's .path-part), split only when it is wider than a whole line."""
    parts = re.findall(f"[^{re.escape(os.sep)}]*(?:{re.escape(os.sep)}|$)", display_path(path))
    return "".join(f'<span class="path-part">{html.escape(p)}</span>' for p in parts if p)


def rescan_finished(report: IndexReport, language: str = ENGLISH_LANGUAGE) -> str:
    """A finished Rescan's summary as HTML, naming each file it skipped and why (the first
    MAX_SKIPPED_SHOWN of them)."""
    summary = report.summary(summary_words(language))
    text = html.escape(message("rescan_finished", language, summary=summary))
    if not report.failed:
        return text
    items = [
        f"<li><code>{breakable_path(failure.path)}</code>: {html.escape(failure.error)}</li>"
        for failure in report.failed[:MAX_SKIPPED_SHOWN]
    ]
    if len(report.failed) > MAX_SKIPPED_SHOWN:
        more = message("skipped_more", language, count=len(report.failed) - MAX_SKIPPED_SHOWN)
        items.append(f"<li>{html.escape(more)}</li>")
    return f'{text}<ul id="rescan-skipped">{"".join(items)}</ul>'


def result_records(result: Any) -> list[dict[str, Any]]:
    """The ranked results of the search's JSON, as the page gave them back; [] for anything
    malformed (the JSON comes back from the browser, or from any client)."""
    records = result.get("results") if isinstance(result, dict) else None
    if not isinstance(records, list):
        return []
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("file_path"), str)]


def best_caption(result: Any, language: str = ENGLISH_LANGUAGE) -> str:
    """File name, score and full path of the best match, from the search's JSON."""
    records = result_records(result)
    if not records:
        return ""
    best = records[0]
    score = best.get("score")
    shown = ""
    if isinstance(score, int | float):
        shown = message("score", language, score=f"{score:.3f}")
    name = best.get("file_name") or Path(best["file_path"]).name
    return f"**{name}**{shown}  \n`{best['file_path']}`"


def rescan_bar(done: int, total: int, seconds: float, language: str = ENGLISH_LANGUAGE) -> str:
    """A progress bar with the count and the time left, as HTML for the page."""
    if not total:  # an indeterminate bar until the folder has been scanned
        scanning = html.escape(message("rescan_scanning", language))
        return f'<progress id="rescan-progress"></progress> {scanning}'
    left = ""
    if done:
        remaining = (total - done) * seconds / done
        if remaining >= 90:
            left = message("minutes_left", language, minutes=round(remaining / 60))
        else:
            left = message("seconds_left", language, seconds=max(1, round(remaining)))
    return (
        f'<progress id="rescan-progress" value="{done}" max="{total}"></progress> '
        f"{done} / {total}{left}"
    )


def failure_line(error: BaseException) -> str:
    """A failed run's error as one line: ours as it is, anything else (CUDA out of memory, a
    bug) with its type; the traceback goes to the debug log."""
    if isinstance(error, ImageSearchError):
        return str(error)
    log.debug("the run failed", exc_info=error)
    return f"{type(error).__name__}: {one_line(error)}"


def words_shown(lines: list[dict[str, Any]] | None) -> str:
    """The lines of text read in a photo, one per line, for the selected result."""
    if lines is None:
        return str(ui("words_not_read"))
    texts = [str(line.get("text", "")) for line in lines if isinstance(line, dict)]
    return "\n".join(texts) if texts else str(ui("no_words_found"))
