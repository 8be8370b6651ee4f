"""Cluster tier: several Ray nodes on one machine (ray.cluster_utils.Cluster), on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray import serve
from ray.cluster_utils import Cluster

from cluster.app import AppArgs, build
from cluster.names import APP_NAME
from tests.integration.conftest import free_port


@contextmanager
def serve_on_nodes(repository, head_cpus: int, worker_cpus: list[int], **app_args) -> Iterator[tuple[Cluster, str]]:
    """A head and workers with these CPUs, Serve's proxy on the head, the repository served; yields the
    cluster and the HTTP base URL, and takes everything down after."""
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    for cpus in worker_cpus:
        nodes.add_node(num_cpus=cpus)
    ray.init(address=nodes.address, log_to_driver=False)
    port = free_port()
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(AppArgs(repository=str(repository), **app_args)), name=APP_NAME, route_prefix="/",
                  external_scaler_enabled=True)
        yield nodes, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        nodes.shutdown()
