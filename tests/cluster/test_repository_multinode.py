"""Several Ray nodes on one machine (ray.cluster_utils.Cluster): replicas of one model on different nodes
both take up a version that lands in the store; a sequence model's replicas on two nodes each keep their
sequences; one scrape of the metrics sums the replicas of every node."""

from __future__ import annotations

import os

import numpy as np
import pytest
import ray
import requests
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from cluster.names import APP_NAME
from cluster.repository.examples import onnx_mlp
from tests.conftest import write_model
from tests.cluster.conftest import replica_nodes, serve_on_nodes
from tests.integration.conftest import wait_for
from tests.integration.served.conftest import ACCUMULATE, ACCUMULATE_CONFIG

# 1.5 CPUs per replica on nodes of 2 CPUs: the two replicas cannot share a node.
CONFIG = ('platform: "onnxruntime_onnx" instance_group [ { count: 2 } ] '
          'parameters { key: "num_cpus" value { string_value: "1.5" } }')


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The repository, served over two nodes; (its folder, the HTTP base URL)."""
    root = tmp_path_factory.mktemp("multinode")
    write_model(root, "spread", CONFIG, {"1/model.onnx": onnx_mlp(seed=1)})
    # 0.4 CPUs per replica where "spread" leaves 0.5 on each node: one replica per node.
    write_model(root, "sequences", ACCUMULATE_CONFIG + 'parameters { key: "num_cpus" value { string_value: "0.4" } }',
                {"1/model.py": ACCUMULATE})
    # The ingress reserves no CPU here, so each node keeps 0.5 beside its "spread" replica.
    with serve_on_nodes(root, head_cpus=2, worker_cpus=[2], poll_interval_s=0.5, replica_num_cpus=0) as (_, url):
        yield root, url


@pytest.fixture(scope="module")
def repository(served):
    return served[0]


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


def test_sequences_stay_on_their_replica_across_nodes(repository):
    """Interleaved sequences through a handle (its router runs here, on the driver): every request of a
    sequence reaches the one replica holding it, whichever node that is; both nodes' replicas hold some."""
    assert len(replica_nodes("sequences")) == 2
    handle = serve.get_deployment_handle("sequences", app_name=APP_NAME)
    sums, pids = {}, {}
    for turn in range(3):
        for cid in range(100, 116):
            parameters = {"sequence_id": cid, "sequence_start": turn == 0, "sequence_end": turn == 2}
            _, out = handle.infer_versioned.remote({"X": np.full((1, 1), cid, np.int64)}, None, None,
                                                   parameters).result(timeout_s=60)
            sums[cid] = sums.get(cid, 0) + cid
            assert out["SUM"][0, 0] == sums[cid]
            pids.setdefault(cid, set()).add(int(out["PID"][0, 0]))
    assert all(len(p) == 1 for p in pids.values()), pids
    assert len(set().union(*pids.values())) == 2


def test_one_scrape_sums_the_replicas_on_every_node(served):
    """The ingress's /metrics is the whole application: the replicas of "spread" on both nodes, summed."""
    _, url = served
    handle = serve.get_deployment_handle("spread", app_name=APP_NAME)
    for _ in range(20):
        handle.infer_versioned.remote({"INPUT0": np.ones((1, 64), np.float32)}).result(timeout_s=60)
    rows = requests.get(f"{url}/v2/models/spread/stats", timeout=30).json()["model_stats"]  # every replica reports
    text = requests.get(f"{url}/metrics", timeout=30).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    success = {dict(labels)["version"]: value for (name, labels), value in samples.items()
               if name in ("nv_inference_request_success", "nv_inference_request_success_total")
               and ("model", "spread") in labels}
    for row in rows:  # the versions served now (the metrics keep version 1's history too)
        assert success[row["version"]] == row["inference_stats"]["success"]["count"], (row, success)
    assert sum(row["inference_stats"]["success"]["count"] for row in rows) >= 20
    assert samples[("ric_model_replicas", (("model", "spread"),))] == 2  # one replica on each node
