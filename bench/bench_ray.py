"""Ray's cost on one machine: the same folder indexed in process and on a two-node Ray
cluster on this machine (`ray.cluster_utils.Cluster`, the cores split between the nodes).

    uv run python bench/bench_ray.py [--images 160] [--runs 2]

Both runs index into a fresh table of one PostgreSQL server (the embedded one, reached
through its socket folder as `postgres-host`, as workers reach a server) and both load the
model inside the timed run, as `image-search index` does; the Ray cluster is started before
(a cluster is already running when image-search is pointed at it). Target: ratio >= 0.75
(goal 0.9).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from urllib.parse import parse_qs, urlparse

from common import DATA, cores, jpeg_folder, median_of, vit_b32_folder

from image_search.config import Settings
from image_search.executor_choice import executor_for
from image_search.ingest import run_index
from image_search.models import Embedder
from image_search.store import VectorSpec, open_store, start_embedded_server

SIZE = (2000, 1500)


def server_settings(base: Settings) -> Settings:
    """The embedded server as a `postgres-host`: its socket folder and port."""
    uri = urlparse(start_embedded_server(base.data_directory))
    query = parse_qs(uri.query)
    host = query.get("host", [uri.hostname])[0]
    port = int(query.get("port", [uri.port or 5432])[0])
    return dataclasses.replace(
        base, postgres_host=host, postgres_port=port, postgres_user=uri.username or "postgres"
    )


def index_seconds(settings: Settings, table: str) -> float:
    with open_store(settings, table) as store:
        store.schema.drop_if_other_vectors(VectorSpec("", 0))  # a leftover of an earlier run
    fresh = dataclasses.replace(settings, table_name=table)
    started = time.perf_counter()
    report = run_index(fresh, Embedder.from_settings(fresh), executor=executor_for(fresh))
    elapsed = time.perf_counter() - started
    assert report.added == report.scanned and not report.failed, report.summary()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray
    from ray.cluster_utils import Cluster

    folder = jpeg_folder(f"ray-{SIZE[0]}x{SIZE[1]}-{args.images}", args.images, SIZE)
    base = Settings(
        source_directory=folder,
        data_directory=DATA / "ray-db",
        model_name=str(vit_b32_folder()),
        dimension=512,
        device="cpu",
        batch_size=16,
    )
    settings = server_settings(base)
    half = max(1, cores() // 2)
    started = time.perf_counter()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": half, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=max(1, cores() - half))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="error")
    start_s = time.perf_counter() - started
    on_ray = dataclasses.replace(settings, ray_address=cluster.address)
    local_runs, ray_runs = [], []
    try:
        for run in range(args.runs):  # interleaved, so that noise hits both alike
            local_runs.append(index_seconds(settings, f"bench_ray_local_{run}"))
            ray_runs.append(index_seconds(on_ray, f"bench_ray_cluster_{run}"))
    finally:
        ray.shutdown()
        cluster.shutdown()
    local_s, ray_s = median_of(local_runs), median_of(ray_runs)
    images = args.images
    print(f"images: {images} JPEGs {SIZE[0]}x{SIZE[1]}, random ViT-B/32, batch 16, cores {cores()}")
    print(f"two-node cluster start (not timed below): {start_s:.1f} s")
    print(
        f"in process:      {local_s:6.1f} s  ({images / local_s:5.1f} img/s)  runs: "
        f"{', '.join(f'{r:.1f}' for r in local_runs)}"
    )
    print(
        f"two-node Ray:    {ray_s:6.1f} s  ({images / ray_s:5.1f} img/s)  runs: "
        f"{', '.join(f'{r:.1f}' for r in ray_runs)}"
    )
    print(f"Ray / in-process throughput: {local_s / ray_s:.2f}  (target >= 0.75, goal 0.9)")


if __name__ == "__main__":
    main()
