"""Near-duplicates among 100,000 stored 512-d vectors.

    uv run python bench/bench_duplicates.py [--vectors 100000] [--groups 500]

Times `image-search duplicates` as the command runs it (duplicates.find_duplicates: each
row's nearest neighbours through the HNSW index in one query, connected groups, the group
members fetched and ordered). The table is bulk-loaded like bench_query.py does it (binary
COPY, then the HNSW index built once) with clustered random vectors, as photo embeddings are
clustered, and `--groups` planted groups of three near-copies (about 0.99 alike, as resized
or re-encoded copies are). It reports how many planted groups were found whole and how many
other groups were reported, and, for scale, what comparing every pair would cost (numpy
matrix products on a sample, extrapolated by the square of the size).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime

import numpy as np
from bench_query import DIMENSION
from common import DATA, bench_row_of, clustered_vectors, copy_vectors

from image_search.config import Settings
from image_search.duplicates import DEFAULT_THRESHOLD, find_duplicates
from image_search.store import Store, VectorSpec, index_name, open_store

COPIES = 2  # per planted group, besides its original
COPY_NOISE = 0.1  # of a unit vector's length: about 0.995 alike


def with_planted_copies(vectors: np.ndarray, groups: int, seed: int) -> list[list[int]]:
    """Overwrite rows so that `groups` originals each have COPIES near-copies; the groups."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(vectors), size=groups * (1 + COPIES), replace=False)
    planted = []
    for group in chosen.reshape(groups, 1 + COPIES):
        original = vectors[group[0]]
        for row in group[1:]:
            noise = rng.standard_normal(DIMENSION).astype(np.float32) / np.sqrt(DIMENSION)
            copy = original + COPY_NOISE * noise
            vectors[row] = copy / np.linalg.norm(copy)
        planted.append(sorted(int(i) for i in group))
    return planted


def load(store: Store, vectors: np.ndarray) -> None:
    store.schema.ensure(VectorSpec("bench/random-512", DIMENSION))
    if store.info().images == len(vectors):
        return
    with store.database.connection() as conn:
        conn.execute(f'TRUNCATE "{store.table}"')
    store.schema.drop_vector_index()
    copy_vectors(store, vectors, taken_at=datetime(2020, 1, 1))
    store.schema.recount()
    started = time.perf_counter()
    store.schema.ensure_vector_index()
    print(
        f"set-up: loaded {len(vectors)} vectors, HNSW built in "
        f"{time.perf_counter() - started:.0f} s"
    )


def all_pairs_estimate(vectors: np.ndarray, sample: int) -> float:
    """Seconds that comparing every pair would take: a sample's all-pairs products, scaled."""
    part = vectors[:sample]
    started = time.perf_counter()
    for start in range(0, sample, 2048):
        scores = part[start : start + 2048] @ part.T
        np.argwhere(scores >= DEFAULT_THRESHOLD)
    return (time.perf_counter() - started) * (len(vectors) / sample) ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--groups", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    vectors = clustered_vectors(args.vectors, DIMENSION, seed=0)
    planted = with_planted_copies(vectors, args.groups, seed=1)
    settings = Settings(data_directory=DATA / "query-db", table_name=f"bench_dup_{args.vectors}")
    with open_store(settings) as store:
        load(store, vectors)
        plan = store.rows.explain_close_pairs(DEFAULT_THRESHOLD, 10)
        on_index = index_name(store.table, "embedding_hnsw") in plan
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            report = find_duplicates(store, DEFAULT_THRESHOLD)
            times.append(time.perf_counter() - started)

    found = {
        tuple(sorted(bench_row_of(m.image.file_name) for m in group.members))
        for group in report.groups
    }
    whole = sum(tuple(group) in found for group in planted)
    extra = len(found - {tuple(group) for group in planted})
    estimate = all_pairs_estimate(vectors, min(len(vectors), 10_000))
    print(
        f"vectors: {args.vectors} x {DIMENSION}, planted groups: {args.groups} x {1 + COPIES}, "
        f"threshold {DEFAULT_THRESHOLD}, 10 neighbours per image, HNSW in the plan: {on_index}"
    )
    print(f"image-search duplicates: {np.median(times):.1f} s median of {args.runs} "
          f"({', '.join(f'{t:.1f}' for t in times)}); "
          f"{args.vectors / np.median(times):.0f} images/s")
    print(f"planted groups found whole: {whole}/{args.groups}; other groups reported: {extra}")
    print(f"all pairs in numpy (extrapolated from 10,000): {estimate:.0f} s")


if __name__ == "__main__":
    main()
