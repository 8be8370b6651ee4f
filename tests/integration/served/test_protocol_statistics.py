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


def test_the_response_cache_answers_repeated_requests_and_counts_hits(server, endpoints):
    """``response_cache { enable: true }``: the same request again is answered without running the model
    (its call count repeats), over HTTP and gRPC alike; Triton's cache_hit / cache_miss count it."""
    def calls(x: float) -> int:
        body = {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [x, x]}]}
        response = requests.post(f"{server}/v2/models/cached/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"][0]

    def stats() -> dict:
        (row,) = requests.get(f"{server}/v2/models/cached/stats", timeout=30).json()["model_stats"]
        return row

    before = stats()
    first = calls(1.0)
    assert calls(1.0) == first  # from the cache
    assert calls(2.0) == first + 1  # another request runs the model
    x = grpcclient.InferInput("X", [1, 2], "FP32")
    x.set_data_from_numpy(np.full((1, 2), 2.0, np.float32))
    assert grpcclient.InferenceServerClient(endpoints.grpc).infer("cached", [x]).as_numpy("CALLS")[0, 0] == first + 1
    after = stats()
    counts = {k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"]
              for k in ("cache_hit", "cache_miss", "success")}
    assert counts == {"cache_hit": 2, "cache_miss": 2, "success": 4}
    assert after["execution_count"] - before["execution_count"] == 2
