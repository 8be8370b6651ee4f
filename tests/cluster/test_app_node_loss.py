"""A node killed under load (ray.cluster_utils.Cluster): requests in flight to its replica end with a clear
503 (never a hang), the replica that lived elsewhere keeps answering, and once a node joins again Serve
starts the lost replica there and every request succeeds."""

from __future__ import annotations

import threading

import pytest
import requests

from cluster.names import INGRESS_NAME
from cluster.repository.examples import onnx_mlp
from tests.cluster.conftest import replica_nodes, serve_on_nodes
from tests.conftest import write_model
from tests.integration.conftest import wait_for

# Replicas of 2 CPUs: one on the head (3 CPUs, where the ingress takes 0.25 of the rest) and one on a
# worker of exactly 2 CPUs, which nothing else fits; HTTP enters on the head.
CONFIG = ('platform: "onnxruntime_onnx" instance_group [ { count: 2 } ] '
          'parameters { key: "num_cpus" value { string_value: "2" } }')
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("node-loss")
    write_model(root, "spread", CONFIG, {"1/model.onnx": onnx_mlp(seed=1)})
    with serve_on_nodes(root, head_cpus=3, worker_cpus=[2]) as (nodes, url):
        yield nodes, f"{url}/v2/models/spread/infer"


def test_a_node_lost_under_load_fails_its_requests_clearly_and_serving_recovers(cluster):
    ray_cluster, url = cluster
    worker = next(node for node in ray_cluster.worker_nodes)
    assert replica_nodes("spread") == {ray_cluster.head_node.node_id: 1, worker.node_id: 1}
    assert set(replica_nodes(INGRESS_NAME)) == {ray_cluster.head_node.node_id}

    answers: list[int] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    answers.append(session.post(url, json=BODY, timeout=90).status_code)
                except requests.RequestException:
                    answers.append(-1)  # a hang or a dropped connection: neither may happen

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) > 40, timeout_s=60, what="answers before the node goes")
        before = len(answers)
        ray_cluster.remove_node(worker, allow_graceful=False)
        wait_for(lambda: len(answers) > before + 100 and set(answers[-40:]) == {200}, timeout_s=120,
                 what=lambda: f"answers from the surviving replica: {answers[-10:]}")
        during = answers[before:]
        ray_cluster.add_node(num_cpus=2)
        wait_for(lambda: sum(replica_nodes("spread").values()) == 2, timeout_s=120,
                 what=lambda: f"the lost replica back on the new node: {replica_nodes('spread')}")
        settled = len(answers)
        wait_for(lambda: len(answers) > settled + 40, timeout_s=60, what="answers after the recovery")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=100)
    assert set(answers[:before]) == {200}
    assert set(during) <= {200, 503}, sorted(set(during))  # lost requests are 503, never 500 or a hang
    assert set(answers[settled:]) == {200}
    print(f"node lost: {during.count(503)} requests answered 503, {during.count(200)} succeeded meanwhile")
