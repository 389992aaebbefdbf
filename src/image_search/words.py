"""Matching the words a user types against the text read in a photo, tolerant of what OCR
gets wrong: case, accents, spaces lost or added ("INVOICE2023"), a character misread in a
longer word ("INVO1CE"), words in another order, part of a word, and CJK text, which has
no spaces.

Both sides are *normalised* first: accents and case folded, and everything but letters and
digits dropped, so that "Café Crème, 45.90" is "cafecreme4590". The query is then split into
its words (tokens); each token is looked for anywhere in the photo's normalised text with at
most a few characters wrong (an approximate substring match), and the photo's score is the
share of the query's characters so found. The database narrows the photos to score with
plain substring tests (`candidate_pieces`): a token found with at most e characters wrong
holds at least one of e + 1 pieces of it unchanged."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

# Characters a token may have wrong, by its length: none below 4, one from 4, two from 8.
ERRORS_BY_LENGTH = ((8, 2), (4, 1))
SEPARATORS = re.compile(r"[\W_]+")
Key = TypeVar("Key")


def normalise(text: str) -> str:
    """Letters and digits only, accents and case folded (compatibility forms too: full-width
    Ａ is a)."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", "".join(c for c in kept.casefold() if c.isalnum()))


def tokens(query: str) -> list[str]:
    """The query's words, normalised (a run of CJK characters is one word)."""
    return [token for part in SEPARATORS.split(query) if (token := normalise(part))]


def allowed_errors(token: str) -> int:
    for length, errors in ERRORS_BY_LENGTH:
        if len(token) >= length:
            return errors
    return 0


def candidate_pieces(query: str) -> list[str]:
    """Pieces of the query's tokens such that a text in which some token matches (within
    its allowed errors) holds at least one piece as it is."""
    pieces = []
    for token in tokens(query):
        parts = allowed_errors(token) + 1
        size = len(token) / parts
        pieces += [token[round(i * size) : round((i + 1) * size)] for i in range(parts)]
    return list(dict.fromkeys(piece for piece in pieces if piece))


def substring_distance(token: str, text: str) -> int:
    """The fewest characters to change, add or drop for `token` to appear in `text`
    (Sellers' approximate substring match: a match may start anywhere in the text)."""
    if not token:
        return 0
    if not text:
        return len(token)
    if token in text:
        return 0
    chars = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    steps = np.arange(len(chars) + 1)
    row = np.zeros(len(chars) + 1, dtype=np.int64)  # a match may start anywhere: free prefix
    for i, character in enumerate(token, start=1):
        diagonal = row[:-1] + (chars != ord(character))
        best = np.empty_like(row)
        best[0] = i
        best[1:] = np.minimum(diagonal, row[1:] + 1)
        # Dropping text characters inside the match: a running minimum along the text.
        row = np.minimum.accumulate(best - steps) + steps
    return int(row.min())


@dataclass(frozen=True)
class WordScore:
    """How well a photo's text matches a query: the share of the query's characters found
    (0 to 1), and the tokens found."""

    score: float
    found: tuple[str, ...]


def score_text(query_tokens: Iterable[str], text: str) -> WordScore:
    """`text` normalised, scored against the tokens of a query: each token found (within its
    allowed errors) counts its length less its errors, out of the tokens' total length."""
    listed = list(query_tokens)
    total = sum(len(token) for token in listed)
    if not total:
        return WordScore(0.0, ())
    gained, found = 0, []
    for token in listed:
        distance = substring_distance(token, text)
        if distance <= allowed_errors(token):
            gained += len(token) - distance
            found.append(token)
    return WordScore(gained / total, tuple(found))


def rank_texts(query: str, texts: Mapping[Key, str]) -> list[tuple[Key, WordScore]]:
    """The keys of the normalised `texts` that match `query` at all, best first: by score,
    then the shorter text (one mostly about the words asked for), then by key."""
    query_tokens = tokens(query)
    scored = [(key, score_text(query_tokens, text)) for key, text in texts.items()]
    matched = [(key, score) for key, score in scored if score.score > 0]
    matched.sort(key=lambda pair: (-pair[1].score, len(texts[pair[0]]), str(pair[0])))
    return matched
