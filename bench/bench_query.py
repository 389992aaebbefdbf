"""Query speed and recall: 100,000 stored 512-d vectors.

    uv run python bench/bench_query.py [--vectors 100000] [--queries 200]

p50/p95 of the project's own nearest-neighbour query (Store.nearest: HNSW, ef_search set from
top-k), its recall@10 against exact search, side by side with the exact scan in PostgreSQL and
with FAISS HNSW in process (same M and ef). Vectors are clustered, like real image embeddings
(a uniform random cloud in 512-d is no picture of a photo library). Loading is set-up: binary
COPY, then the HNSW index built once, as the index run does for a large first load.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import DATA, clustered_vectors, copy_vectors, median_of

from image_search.config import Settings
from image_search.store import Store, VectorSpec, open_store
from image_search.store.similar import MIN_EF_SEARCH

DIMENSION = 512
TOP_K = 10
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64  # pgvector's defaults, which the schema uses


def load(store: Store, vectors: np.ndarray) -> None:
    store.schema.ensure(VectorSpec("bench/random-512", DIMENSION))
    if store.info().images == len(vectors):
        return
    with store.database.connection() as conn:
        conn.execute(f'TRUNCATE "{store.table}"')
    store.schema.drop_vector_index()
    copy_vectors(store, vectors)
    store.schema.recount()
    started = time.perf_counter()
    store.schema.ensure_vector_index()
    print(
        f"set-up: loaded {len(vectors)} vectors, HNSW built in "
        f"{time.perf_counter() - started:.0f} s"
    )


def exact(store: Store, query: np.ndarray) -> list[str]:
    with store.database.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(
            f'SELECT file_path FROM "{store.table}" ORDER BY embedding <=> %s LIMIT %s',
            [query, TOP_K],
        ).fetchall()
    return [row[0] for row in rows]


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    vectors = clustered_vectors(args.vectors, DIMENSION, seed=0)
    # Queries: new points near stored ones, as a second photo of a subject is.
    queries = vectors[np.random.default_rng(2).integers(0, len(vectors), args.queries)]
    noise = np.random.default_rng(3).standard_normal(queries.shape) / np.sqrt(DIMENSION)
    queries = queries + 0.3 * noise  # about 0.3 of a unit vector's length
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)

    settings = Settings(data_directory=DATA / "query-db", table_name=f"bench_query_{args.vectors}")
    with open_store(settings) as store:
        load(store, vectors)
        ours, scan, recalls, truths = [], [], [], []
        for query in queries:  # interleaved, so that noise hits both alike
            started = time.perf_counter()
            found = [m.file_path for m in store.rows.nearest(query, TOP_K)]
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            truth = exact(store, query)
            scan.append(time.perf_counter() - started)
            recalls.append(len(set(found) & set(truth)) / TOP_K)
            truths.append({int(path[len("/bench/v") : -4]) for path in truth})

    import faiss

    index = faiss.IndexHNSWFlat(DIMENSION, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    started = time.perf_counter()
    index.add(vectors)
    build = time.perf_counter() - started
    index.hnsw.efSearch = MIN_EF_SEARCH
    faiss_times, faiss_recalls = [], []
    for query, truth in zip(queries, truths, strict=True):
        started = time.perf_counter()
        _, ids = index.search(query[None, :], TOP_K)
        faiss_times.append(time.perf_counter() - started)
        faiss_recalls.append(len(set(ids[0].tolist()) & truth) / TOP_K)

    print(
        f"vectors: {args.vectors} x {DIMENSION}, queries: {args.queries}, k={TOP_K}, "
        f"HNSW m={HNSW_M} ef_construction={HNSW_EF_CONSTRUCTION} ef_search={MIN_EF_SEARCH}"
    )
    for label, samples in (
        ("image-search (pgvector HNSW)", ours),
        ("PostgreSQL exact scan", scan),
        ("FAISS HNSW in process", faiss_times),
    ):
        print(
            f"{label:30s} p50 {percentile_ms(samples, 50):8.2f} ms   "
            f"p95 {percentile_ms(samples, 95):8.2f} ms"
        )
    print(
        f"recall@{TOP_K} vs exact: image-search {np.mean(recalls):.3f}  (target >= 0.95), "
        f"FAISS {np.mean(faiss_recalls):.3f}"
    )
    print(
        f"exact scan / image-search (p50): {median_of(scan) / median_of(ours):.1f}x  "
        "(target >= 20x)"
    )
    print(
        f"image-search / FAISS (p50): {median_of(ours) / median_of(faiss_times):.1f}x  "
        f"(FAISS build {build:.0f} s)"
    )


if __name__ == "__main__":
    main()
