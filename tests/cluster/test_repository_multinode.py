"""Several Ray nodes on one machine (ray.cluster_utils.Cluster): replicas of one model on different nodes
both take up a version that lands in the store."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
from ray import serve

from cluster.names import APP_NAME
from cluster.repository.examples import onnx_mlp
from tests.conftest import write_model
from tests.cluster.conftest import serve_on_nodes
from tests.integration.conftest import wait_for

# 1.5 CPUs per replica on nodes of 2 CPUs: the two replicas cannot share a node.
CONFIG = ('platform: "onnxruntime_onnx" instance_group [ { count: 2 } ] '
          'parameters { key: "num_cpus" value { string_value: "1.5" } }')


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    write_model(root, "spread", CONFIG, {"1/model.onnx": onnx_mlp(seed=1)})
    with serve_on_nodes(root, head_cpus=2, worker_cpus=[2], poll_interval_s=0.5):
        yield root


def test_a_new_version_reaches_replicas_on_every_node(repository):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    status = serve.status().applications[APP_NAME].deployments["spread"]
    assert status.replica_states.get("RUNNING") == 2  # one per node, by the CPU arithmetic above
    handle = serve.get_deployment_handle("spread", app_name=APP_NAME)
    x = {"INPUT0": np.ones((1, 64), np.float32)}
    assert handle.infer_versioned.remote(x).result()[0] == 1

    staging = repository / "spread" / ".staging"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(onnx_mlp(seed=2))
    os.rename(staging, repository / "spread" / "2")

    seen: list[int] = []

    def everywhere() -> bool:
        seen.extend(handle.infer_versioned.remote(x).result()[0] for _ in range(10))
        return len(seen) >= 40 and set(seen[-40:]) == {2}

    wait_for(everywhere, timeout_s=90, what=lambda: f"version 2 on both nodes; last {seen[-10:]}")
