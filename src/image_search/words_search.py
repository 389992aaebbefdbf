"""A search by the words in photos (`search --words`, the page's "Words in the photo" box):
photos ranked by how well the text read in them matches (words.py), alone, or with the
other parts of the query (an image, a text, files alike) as one ranking.

The two rankings are fused by their ranks, not their scores (reciprocal rank fusion): a
photo's fused score is the sum of 1 / (RRF_K + rank) over the rankings it is in. Cosine
similarities and word matches are on scales that cannot be compared (a CLIP model's text
queries score 0.2-0.35 whatever they find; a word match is 1 whenever all words are found),
so a weighted sum would let one of them decide alone; ranks need no calibration. Every photo
the words find is also ranked by its similarity, so that a photo holding the words and
looking like the query comes first. The score shown is the fused score over its largest
possible value: 1 for a photo first in both rankings, 0.5 for one first in one ranking and
absent from the other."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .store import Filters, Match, Store
from .store.words import TableWords, WordCandidate
from .words import candidate_pieces, rank_texts, tokens

# Reciprocal rank fusion's constant: the usual 60 (Cormack et al., 2009), which keeps the
# first few ranks of either list from swamping the other.
RRF_K = 60
# Photos whose text is scored for one query at most (those holding the most whole words
# first): one request's budget, whatever the library holds.
MAX_CANDIDATES = 2000
# Photos taken from the vector ranking into a fused one, at least.
FUSION_DEPTH = 100


def search_words(
    store: Store, words: str, k: int, filters: Filters, vector: np.ndarray | None = None
) -> list[Match]:
    """The k best photos for `words` (and `vector`, when the query has other parts)."""
    query_tokens = tokens(words)
    unscored = dataclasses.replace(filters, min_score=None)  # applied to the final score
    table_words = TableWords(store.database, store.table)
    found = table_words.candidates(
        candidate_pieces(words), query_tokens, MAX_CANDIDATES, unscored, vector, store.rows.kind
    )
    by_path = {candidate.file_path: candidate for candidate in found}
    texts = {path: candidate.search_text for path, candidate in by_path.items()}
    matched = [(by_path[path], score.score) for path, score in rank_texts(words, texts)]
    if vector is None:
        ranked = [(c.file_path, score, c) for c, score in matched]
    else:
        ranked = fused(store, vector, k, unscored, matched)
    kept = [entry for entry in ranked if filters.keeps_score(entry[1])][:k]
    return [
        Match(rank, float(score), path, entry.processed_path, entry.taken_at)
        for rank, (path, score, entry) in enumerate(kept, start=1)
    ]


def fused(
    store: Store,
    vector: np.ndarray,
    k: int,
    filters: Filters,
    matched: list[tuple[WordCandidate, float]],
) -> list[tuple[str, float, Any]]:
    """Reciprocal rank fusion of the ranking by words (`matched`, best first) and the
    ranking by similarity to `vector` (the nearest photos, and every photo the words
    found); best first, as (path, score, the row) with score in 0-1."""
    nearest = store.rows.nearest(vector, max(FUSION_DEPTH, 2 * k), filters)
    similarity: dict[str, float] = {m.file_path: m.score for m in nearest}
    rows: dict[str, Any] = {m.file_path: m for m in nearest}
    for candidate, _ in matched:
        rows.setdefault(candidate.file_path, candidate)
        if candidate.similarity is not None:
            similarity[candidate.file_path] = candidate.similarity
    by_vector = sorted(similarity, key=lambda path: (-similarity[path], path))
    scores = {path: 1 / (RRF_K + rank) for rank, path in enumerate(by_vector, start=1)}
    for rank, (candidate, _) in enumerate(matched, start=1):
        path = candidate.file_path
        scores[path] = scores.get(path, 0.0) + 1 / (RRF_K + rank)
    best_possible = 2 / (RRF_K + 1)
    order = sorted(scores, key=lambda path: (-scores[path], -similarity.get(path, -2), path))
    return [(path, scores[path] / best_possible, rows[path]) for path in order]


def words_record(words: str, fused_with_vector: bool) -> dict[str, Any]:
    """What query.json says of a search by words."""
    return {
        "text": words,
        "tokens": tokens(words),
        "ranking": (
            f"reciprocal rank fusion (k={RRF_K}) of the words and the other parts"
            if fused_with_vector
            else "words alone"
        ),
    }


def no_words_warning(store: Store) -> list[str]:
    """A warning when no photo of the table has its words read (the ocr key was never on)."""
    if TableWords(store.database, store.table).any_read():
        return []
    return [
        f"no words have been read in the photos of table '{store.table}' yet: turn the ocr "
        "key on and run `image-search index` (or Rescan on the page)"
    ]
