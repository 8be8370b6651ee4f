"""Cluster tier: several Ray nodes on one machine (ray.cluster_utils.Cluster), on 127.0.0.1."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from ray import serve
from ray.cluster_utils import Cluster

from cluster.app import AppArgs, build
from cluster.names import APP_NAME
from tests.integration.conftest import free_port, wait_for

#: Object store per fake node (Ray's default takes 30% of memory for each).
OBJECT_STORE_BYTES = 200 * 2**20


def replicas(deployment: str) -> list[dict]:
    """Serve's details of each replica of a deployment of the application."""
    # Serve's per-replica details have no public Python call (the dashboard's REST route asks the same).
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()["applications"][APP_NAME]["deployments"][deployment]["replicas"]


def replica_nodes(deployment: str) -> dict[str, int]:
    """Running replicas of a deployment of the application, per node id."""
    return dict(Counter(replica["node_id"] for replica in replicas(deployment) if replica["state"] == "RUNNING"))


def replica_states(deployment: str) -> dict[str, int]:
    """How many of a deployment's replicas are in each state (a stalled upscale says where it stopped)."""
    return dict(Counter(replica["state"] for replica in replicas(deployment)))


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
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            nodes.shutdown()


@contextmanager
def autoscaling_nodes(tmp_path, head_cpus: int, node_types: dict[str, dict], idle_timeout_s: float) -> Iterator[str]:
    """A Ray head with Ray's own autoscaler over its fake multi-node provider (worker nodes are real raylets
    on this machine), on 127.0.0.1; yields the GCS address. Like ``ray.cluster_utils.AutoscalingCluster``,
    whose base config the Ray wheel does not ship and whose start and stop run ``ray stop --force`` (every
    Ray on the machine): here ``ray start --block`` runs as our child, and only the processes below it stop."""
    import json
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    port = free_port()
    config = {
        "cluster_name": "ric-fake", "max_workers": sum(t["max_workers"] for t in node_types.values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {},
                                                      "max_workers": 0},
                                 **{name: {"node_config": {}, **spec} for name, spec in node_types.items()}},
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60, "docker": {}, "initialization_commands": [],
        "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
        "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
        "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
    }
    for spec in node_types.values():
        spec["resources"].setdefault("object_store_memory", OBJECT_STORE_BYTES)
    path, log = tmp_path / "autoscaling.json", tmp_path / "ray-start.log"
    path.write_text(json.dumps(config))
    head_env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--autoscaling-config={path}",
         f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={head_cpus}", "--num-gpus=0",
         f"--object-store-memory={OBJECT_STORE_BYTES}", "--include-dashboard=false", "--disable-usage-stats"],
        env=head_env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: head.poll() is not None or "--block" in log.read_text(), timeout_s=120,
                 what="ray start --head")
        assert head.poll() is None, log.read_text()[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        below = psutil.Process(head.pid).children(recursive=True)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        for process in below:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
