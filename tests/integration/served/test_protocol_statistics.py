"""Triton statistics over HTTP and gRPC, per model version, summed over every replica, and current when
read: each check reads them straight after the requests, with no wait."""

from __future__ import annotations


import numpy as np
import requests
import tritonclient.grpc as grpcclient



def flaky_stats(server) -> dict:
    (row,) = requests.get(f"{server}/v2/models/flaky/versions/1/stats", timeout=30).json()["model_stats"]
    return row


def test_statistics_sum_both_replicas_and_count_failures(server, client):
    before = flaky_stats(server)["inference_stats"]
    body = lambda x: {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "INT64", "data": [x]}]}  # noqa: E731
    for x in range(10):
        assert requests.post(f"{server}/v2/models/flaky/infer", json=body(x), timeout=30).status_code == 200
    assert requests.post(f"{server}/v2/models/flaky/infer", json=body(-5), timeout=30).status_code == 500

    row = flaky_stats(server)
    stats = row["inference_stats"]
    assert stats["success"]["count"] == before["success"]["count"] + 10  # both replicas, counted when read
    assert stats["fail"]["count"] == before["fail"]["count"] + 1
    assert row["name"] == "flaky" and row["version"] == "1" and row["last_inference"] > 0
    assert row["execution_count"] >= 11 and row["inference_count"] >= 10
    for stage in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[stage]["ns"] > 0, stage
    assert sum(batch["compute_infer"]["count"] for batch in row["batch_stats"]) == row["execution_count"]


def test_statistics_through_stock_clients(server, client, endpoints):
    x = np.arange(16, dtype=np.int32).reshape(1, 16)
    (before,) = client.get_inference_statistics("simple")["model_stats"]
    for _ in range(3):
        client.infer("simple", [_input(n, x) for n in ("INPUT0", "INPUT1")])
    (row,) = client.get_inference_statistics("simple")["model_stats"]
    assert row["inference_count"] == before["inference_count"] + 3  # current at once, as Triton's
    every = requests.get(f"{server}/v2/models/stats", timeout=30).json()["model_stats"]
    assert {"simple", "mlp", "echo"} <= {row["name"] for row in every}
    grpc_stats = grpcclient.InferenceServerClient(endpoints.grpc).get_inference_statistics("simple", as_json=True)
    (row,) = grpc_stats["model_stats"]
    assert row["name"] == "simple" and int(row["inference_count"]) >= 3
    assert requests.get(f"{server}/v2/models/simple/versions/9/stats", timeout=30).status_code == 404
    assert requests.get(f"{server}/v2/models/nope/stats", timeout=30).status_code == 404


def _input(name, array):
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput(name, list(array.shape), "INT32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_http_requests_run_in_the_ingress_copy_of_a_colocated_model(server):
    """With colocation the model deployment's own replica sees no HTTP request, yet the summed statistics
    count every one (the Ingress's copy reports them)."""
    from ray import serve

    from cluster.names import APP_NAME

    def own_count() -> int:  # the deployment replica's own statistics (simple has one replica)
        return serve.get_deployment_handle("simple", app_name=APP_NAME).statistics.remote().result()[1][
            "inference_count"]

    def summed_count() -> int:
        (row,) = requests.get(f"{server}/v2/models/simple/versions/1/stats", timeout=30).json()["model_stats"]
        return row["inference_count"]

    own, summed = own_count(), summed_count()
    body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                       for n in ("INPUT0", "INPUT1")]}
    for _ in range(5):
        assert requests.post(f"{server}/v2/models/simple/infer", json=body, timeout=30).status_code == 200
    assert summed_count() == summed + 5
    assert own_count() == own
