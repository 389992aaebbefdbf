"""The database's part of one search at 1,000 and at 1,000,000 stored vectors.

    uv run python bench/bench_search_scale.py [--sizes 1000,1000000] [--dimension 128]

A search asks the store two things: the table's info (model, dimension, how many images were
searched) and the k nearest rows. Both are timed together, as `Searcher` runs them, on tables
bulk-loaded with clustered random vectors (binary COPY, then the HNSW index built once).
Queries are new points near stored ones, as a second photo of a subject is (as in
bench_query.py). The count comes from the meta table; `count(*)`, which the first version ran on
every search, is timed beside it for comparison. Target: the search at the largest size costs at
most 1.5x the search at the smallest.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import DATA, clustered_vectors, copy_vectors, median_of

from image_search.config import Settings
from image_search.store import Store, VectorSpec, open_store
from image_search.store.tables import create_vector_index, index_name

TOP_K = 10
CHUNK = 100_000
WARM_UP = 20
def queries_near(count: int, dimension: int, how_many: int) -> np.ndarray:
    """New points near vectors stored in the table of `count` rows (its first chunk)."""
    stored = clustered_vectors(min(CHUNK, count), dimension, seed=0)
    rng = np.random.default_rng(2)
    queries = stored[rng.integers(0, len(stored), how_many)]
    queries = queries + 0.3 * rng.standard_normal(queries.shape) / np.sqrt(dimension)
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def copy_clustered(store: Store, kind: str, count: int, dimension: int, chunk: int) -> None:
    """`count` rows of clustered vectors (`vector` or `halfvec`) into the store's table by
    binary COPY, `chunk` rows per generated block (the block's seed is its first row), and
    the meta table's count set to match."""
    for first in range(0, count, chunk):
        vectors = clustered_vectors(min(chunk, count - first), dimension, seed=first)
        copy_vectors(store, vectors, first, kind)
    store.schema.recount()


def load(store: Store, count: int, dimension: int) -> None:
    """Fill the table once (kept between runs); HNSW built after the load."""
    store.schema.drop_if_other_vectors(VectorSpec("bench/random", dimension))
    store.schema.ensure(VectorSpec("bench/random", dimension))
    if store.info().images == count:
        build_index(store)  # a no-op, unless an earlier build was interrupted
        return
    with store.database.connection() as conn:
        conn.execute(f'TRUNCATE "{store.table}"')
    store.schema.drop_vector_index()
    started = time.perf_counter()
    copy_clustered(store, "vector", count, dimension, CHUNK)
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    build_index(store)
    print(
        f"set-up: {count} vectors loaded in {loaded:.0f} s, HNSW built in "
        f"{time.perf_counter() - started:.0f} s"
    )


def build_index(store: Store) -> None:
    with store.database.connection() as conn, conn.transaction():  # set-up: give it room
        conn.execute("SET LOCAL maintenance_work_mem = '4GB'")
        create_vector_index(conn, store.table, "vector")


def one_search(store: Store, query: np.ndarray) -> tuple[int, float, float]:
    """As Searcher runs it: the table's info, then the nearest rows. Returns the number of
    images searched and the seconds each part took."""
    started = time.perf_counter()
    info = store.info()
    middle = time.perf_counter()
    store.rows.nearest(query, TOP_K)
    return info.images, middle - started, time.perf_counter() - middle


def count_star(store: Store) -> int:
    with store.database.connection() as conn:
        return conn.execute(f'SELECT count(*) FROM "{store.table}"').fetchone()[0]


def sizes_on_disk(store: Store) -> str:
    with store.database.connection() as conn:
        table, index, buffers = conn.execute(
            "SELECT pg_size_pretty(pg_relation_size(%s)), pg_size_pretty(pg_relation_size(%s)), "
            "current_setting('shared_buffers')",
            [store.table, index_name(store.table, "embedding_hnsw")],
        ).fetchone()
    return f"table {table}, HNSW index {index} (shared_buffers {buffers})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,1000000")
    parser.add_argument("--dimension", type=int, default=128)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    settings = Settings(data_directory=DATA / "scale-db")
    queries = {size: queries_near(size, args.dimension, args.queries) for size in sizes}
    with open_store(settings, "unused") as base:
        stores = [Store(base.database, f"bench_scale_{size}") for size in sizes]
        for store, size in zip(stores, sizes, strict=True):
            load(store, size, args.dimension)
        for store, size in zip(stores, sizes, strict=True):  # warm-up, not timed
            for query in queries[size][:WARM_UP]:
                one_search(store, query)
        searches: dict[int, list[float]] = {size: [] for size in sizes}
        infos: dict[int, list[float]] = {size: [] for size in sizes}
        nearests: dict[int, list[float]] = {size: [] for size in sizes}
        counts: dict[int, list[float]] = {size: [] for size in sizes}
        for i in range(args.queries):  # interleaved, so that noise hits every size alike
            for store, size in zip(stores, sizes, strict=True):
                images, info_s, nearest_s = one_search(store, queries[size][i])
                assert images == size
                searches[size].append(info_s + nearest_s)
                infos[size].append(info_s)
                nearests[size].append(nearest_s)
        for _ in range(5):
            for store, size in zip(stores, sizes, strict=True):
                started = time.perf_counter()
                count_star(store)
                counts[size].append(time.perf_counter() - started)
        on_disk = sizes_on_disk(stores[-1])

    print(f"dimension {args.dimension}, k={TOP_K}, {args.queries} queries per size")
    print(f"at {sizes[-1]} rows: {on_disk}")
    for size in sizes:
        samples = np.array(searches[size]) * 1000
        print(
            f"{size:>9} rows: search p50 {np.percentile(samples, 50):6.2f} ms  "
            f"p95 {np.percentile(samples, 95):6.2f} ms   "
            f"(info {median_of(infos[size]) * 1000:.2f} + nearest "
            f"{median_of(nearests[size]) * 1000:.2f} ms; "
            f"count(*) alone: {median_of(counts[size]) * 1000:.1f} ms)"
        )
    ratio = median_of(searches[sizes[-1]]) / median_of(searches[sizes[0]])
    print(f"search at {sizes[-1]} / at {sizes[0]} (p50): {ratio:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
