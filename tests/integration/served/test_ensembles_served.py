"""Ensembles served like any model: results equal the steps called by hand, branches run, failures are
named, crops fan out to a batching classifier, over HTTP, gRPC and handles."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from ray import serve

from cluster.names import APP_NAME
from tests.integration.conftest import wait_for
from tests.integration.served.conftest import local

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), 3, np.int32)


def tensor(name, array):
    return {"name": name, "shape": list(array.shape), "datatype": {"int32": "INT32", "float32": "FP32",
            "int64": "INT64"}[array.dtype.name], "data": array.ravel().tolist()}


def infer(server, model, **inputs):
    response = requests.post(f"{server}/v2/models/{model}/infer", timeout=60,
                             json={"inputs": [tensor(n, a) for n, a in inputs.items()]})
    return response


def outputs(response):
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in response.json()["outputs"]}


def test_chain_equals_the_steps_called_by_hand(server):
    simple = serve.get_deployment_handle("simple", app_name=APP_NAME)
    first = simple.infer.remote({"INPUT0": A, "INPUT1": B}).result()
    second = simple.infer.remote({"INPUT0": first["OUTPUT0"], "INPUT1": first["OUTPUT1"]}).result()
    response = infer(server, "chain", A=A, B=B)
    assert response.status_code == 200, response.text
    got = outputs(response)
    np.testing.assert_array_equal(got["SUM2"], second["OUTPUT0"])
    np.testing.assert_array_equal(got["DIFF2"], second["OUTPUT1"])


def test_diamond_branches_and_concurrent_requests_are_all_correct(server):
    rng = np.random.default_rng(5)
    cases = [(rng.integers(-50, 50, (1, 16)).astype(np.int32), rng.integers(-50, 50, (1, 16)).astype(np.int32))
             for _ in range(16)]
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda ab: infer(server, "diamond", A=ab[0], B=ab[1]), cases))
    for (a, b), response in zip(cases, responses):
        assert response.status_code == 200, response.text
        np.testing.assert_array_equal(outputs(response)["OUT"], (a + b) + (b - a))


def test_an_ensemble_as_a_step_of_another(server):
    """Over HTTP both run in the ingress (the inner one a colocated copy called in process); through a
    handle, in their own deployments."""
    expected = {"SUM": 2 * A + 2 * B, "DIFF": 2 * A - 2 * B}
    response = infer(server, "nested", A=A, B=B)
    assert response.status_code == 200, response.text
    got = outputs(response)
    handle = serve.get_deployment_handle("nested", app_name=APP_NAME)
    by_handle = handle.infer.remote({"A": A, "B": B}).result(timeout_s=60)
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array)
        np.testing.assert_array_equal(by_handle[name], array)


def test_failing_step_names_the_step_and_the_model(server):
    response = infer(server, "failing", X=np.array([[-1]], np.int64))
    assert response.status_code == 500
    assert "ensemble 'failing' step 0 (model 'flaky') failed" in response.json()["error"]
    assert "ValueError" in response.json()["error"] and "negative input" not in response.json()["error"]
    assert outputs(infer(server, "failing", X=np.array([[2]], np.int64)))["Y"].tolist() == [[4]]


def test_broken_ensembles_are_reported(client, server):
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["missing_step"]["state"] == "UNAVAILABLE" and "'nope' is not in the repository" in index["missing_step"]["reason"]
    wait_for(lambda: "tensor 'A'" in {r["name"]: r for r in client.get_model_repository_index()}["bad_types"]["reason"],
             timeout_s=60, what="bad_types to be checked")
    response = infer(server, "bad_types", A=np.zeros((1, 16), np.float32))
    assert response.status_code == 503 and "takes INT32" in response.json()["error"]
    assert index["chain"]["state"] == "READY"


@pytest.mark.parametrize("objects", [0, 3, 100])
def test_detector_crops_fan_out_to_the_classifier(server, repository, objects):
    rng = np.random.default_rng(objects)
    image = -np.abs(rng.standard_normal((120, 64))).astype(np.float32)
    chosen = np.sort(rng.choice(120, objects, replace=False))
    image[chosen] *= -1  # positive rows are the objects
    response = infer(server, "detect_classify", IMAGE=image)
    assert response.status_code == 200, response.text
    got = outputs(response)
    assert got["BOXES"].tolist() == chosen.tolist()
    assert got["SCORES"].shape == (objects, 10)  # 100 crops: split at mlp's max_batch_size of 64
    if objects:
        mlp = local(repository, "mlp")
        (expected,) = mlp.execute([mlp.prepare({"INPUT0": image[chosen][:64]})])
        np.testing.assert_allclose(got["SCORES"][:64], expected["OUTPUT0"], rtol=1e-4, atol=1e-5)


def test_crops_of_concurrent_requests_batch_together(server, client):
    """Counted over every copy of the classifier (the ensemble runs in the ingress, calling its copy there)."""
    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics("batched_mlp")["model_stats"]
        return sum(s["inference_count"] for s in stats), sum(s["execution_count"] for s in stats)

    rows_before, executions_before = counts()
    image = np.abs(np.random.default_rng(1).standard_normal((2, 64))).astype(np.float32)  # two objects each
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: infer(server, "classify_batched", IMAGE=image), range(12)))
    assert all(r.status_code == 200 and outputs(r)["SCORES"].shape == (2, 10) for r in responses)
    wait_for(lambda: counts()[0] - rows_before == 24, timeout_s=30, what="the classifier's statistics")
    executions = counts()[1] - executions_before
    assert executions < 12, f"12 ensemble requests made {executions} classifier executions"


def test_an_ensemble_deployment_passes_large_tensors_by_reference(server):
    """Through the ensemble's own deployment (a handle from this job): a 5 MB image to the detector, its
    2.6 MB of crops to the classifier in requests of 64 rows, each reading the detector's result in place;
    the answer equals the one over HTTP (the ensemble's copy in the ingress, calling the classifier's copy
    there in process)."""
    image = np.random.default_rng(2).standard_normal((20480, 64)).astype(np.float32)
    handle = serve.get_deployment_handle("detect_classify", app_name=APP_NAME)
    got = handle.infer.remote({"IMAGE": image}).result(timeout_s=120)
    boxes = np.flatnonzero(image.mean(axis=1) > 0)
    assert got["BOXES"].tolist() == boxes.tolist() and got["SCORES"].shape == (len(boxes), 10)
    response = infer(server, "detect_classify", IMAGE=image[:300])
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(outputs(response)["SCORES"], got["SCORES"][:np.count_nonzero(boxes < 300)],
                               rtol=1e-5, atol=1e-6)


def test_ensemble_over_grpc_handles_and_metadata(endpoints, client):
    grpc = grpcclient.InferenceServerClient(endpoints.grpc)
    inputs = []
    for name, array in (("A", A), ("B", B)):
        t = grpcclient.InferInput(name, [1, 16], "INT32")
        t.set_data_from_numpy(array)
        inputs.append(t)
    result = grpc.infer("chain", inputs)
    np.testing.assert_array_equal(result.as_numpy("SUM2"), 2 * A)
    assert grpc.is_model_ready("chain") and client.is_model_ready("detect_classify")
    handle = serve.get_deployment_handle("chain", app_name=APP_NAME)
    np.testing.assert_array_equal(handle.infer.remote({"A": A, "B": B}).result()["DIFF2"], 2 * B)
    metadata = client.get_model_metadata("detect_classify")
    assert metadata["platform"] == "ensemble" and metadata["versions"] == ["1"]
    assert client.get_model_config("chain")["ensemble_scheduling"]["step"][0]["model_name"] == "simple"
    wait_for(lambda: client.get_inference_statistics("chain")["model_stats"][0]["inference_count"] >= 2,
             timeout_s=30, what="the ensemble's statistics")
