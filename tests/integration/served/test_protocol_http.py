"""HTTP, as a Triton user calls it: stock tritonclient.http (JSON and binary tensors) and plain HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import settled, wait_for
from tests.integration.served.conftest import CASES, MAX_REQUEST_BYTES, echo_inputs, local, reference

def triton_infer(client, model, inputs, outputs, binary=False):
    infer_inputs = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == object else httpclient.np_to_triton_dtype(array.dtype)
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        infer_inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs]
    result = client.infer(model, infer_inputs, outputs=requested, request_id="req-42")
    assert result.get_response()["id"] == "req-42"
    return {name: result.as_numpy(name) for name in outputs}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", sorted(CASES))
def test_tritonclient_http_gets_the_in_process_answer(client, repository, model, binary):
    expected = reference(repository, model, CASES[model])
    got = triton_infer(client, model, CASES[model], list(expected), binary)
    for name, array in expected.items():
        if array.dtype == object:  # tritonclient gives JSON BYTES back as str, binary ones as bytes
            decode = (lambda a: a) if binary else np.vectorize(bytes.decode, otypes=[object])
            assert got[name].tolist() == decode(array).tolist()
        else:
            np.testing.assert_allclose(got[name], array, rtol=1e-5)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_round_trips_through_tritonclient(client, binary):
    inputs = echo_inputs()
    got = triton_infer(client, "echo", inputs, [n.replace("IN_", "OUT_") for n in inputs], binary)
    for name, array in inputs.items():
        out = got[name.replace("IN_", "OUT_")]
        if array.dtype == object:
            expected = array if binary else np.vectorize(bytes.decode, otypes=[object])(array)
            assert out.tolist() == expected.tolist()
        else:
            assert out.dtype == array.dtype and out.tolist() == array.tolist()


def test_tritonclient_defaults_binary_in_and_out(client):
    x = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(x)  # binary_data=True by default
    result = client.infer("simple", inputs)  # no outputs named: binary_data_output for all
    assert result.get_output("OUTPUT0")["parameters"]["binary_data_size"] == 64
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), 0 * x)


def test_server_and_model_metadata_through_tritonclient(client):
    assert client.is_server_live()
    assert not client.is_server_ready()  # strict readiness: two broken models are in the repository
    assert client.get_server_metadata()["name"] == "triton"
    assert {"system_shared_memory", "sequence", "schedule_policy"} <= set(client.get_server_metadata()["extensions"])
    assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("broken_model") and not client.is_model_ready("nope")
    metadata = client.get_model_metadata("simple")
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    config = client.get_model_config("mlp")  # auto-completed from model.onnx
    assert config["input"] == [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [64], "optional": False}]
    assert config["max_batch_size"] == 64 and config["output"][0]["dims"] == [10]


def test_broken_models_are_reported_and_the_rest_serve(client, server, repository):
    index = {row["name"]: row for row in client.get_model_repository_index()}
    assert index["mlp"]["state"] == "READY"
    assert index["broken_config"]["state"] == "UNAVAILABLE"
    assert "broken_config/config.pbtxt" in index["broken_config"]["reason"]
    assert "max_batch_sise" in index["broken_config"]["reason"]
    assert index["broken_model"]["state"] == "UNAVAILABLE" and "failed to load" in index["broken_model"]["reason"]
    assert all(str(repository) not in row["reason"] for row in index.values())  # no paths of the node
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
    for model in ("broken_config", "broken_model"):
        response = requests.post(f"{server}/v2/models/{model}/infer", json=body, timeout=30)
        assert response.status_code == 503
        assert f"Request for unknown model: '{model}' has no available versions" in response.json()["error"]
    assert requests.get(f"{server}/v2/health/ready", timeout=30).status_code == 503
    assert requests.get(f"{server}/v2/health/live", timeout=30).status_code == 200


def simple_body(rows=1, **overrides):
    data = list(range(16 * rows))
    body = {"id": "abc", "inputs": [
        {"name": "INPUT0", "shape": [rows, 16], "datatype": "INT32", "data": data},
        {"name": "INPUT1", "shape": [rows, 16], "datatype": "INT32", "data": data},
    ]}
    body.update(overrides)
    return body


def test_plain_http_json_with_id_requested_outputs_and_versions(server):
    response = requests.post(f"{server}/v2/models/simple/versions/1/infer",
                             json=simple_body(outputs=[{"name": "OUTPUT0"}]), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "abc" and body["model_name"] == "simple" and body["model_version"] == "1"
    assert [o["name"] for o in body["outputs"]] == ["OUTPUT0"]
    assert body["outputs"][0]["data"] == [2 * i for i in range(16)]


def bad_requests():
    two_inputs = simple_body()["inputs"]
    return [
        ("simple", b"{not json", 400, "malformed JSON"),
        ("simple", json.dumps({"inputs": [dict(two_inputs[0], datatype="FP32"), two_inputs[1]]}), 400, "data-type is 'FP32'"),
        ("simple", json.dumps({"inputs": [dict(two_inputs[0], shape=[2, 8]), two_inputs[1]]}), 400,
         "unexpected shape for input 'INPUT0' for model 'simple'. Expected [-1,16], got [2,8]"),
        ("simple", json.dumps({"inputs": [dict(two_inputs[0], name="INPUT9"), two_inputs[1]]}), 400,
         "unexpected inference input 'INPUT9' for model 'simple'"),
        ("simple", json.dumps({"inputs": two_inputs[:1]}), 400, "missing input 'INPUT1'"),
        ("simple", json.dumps(simple_body(rows=9)), 400, "batch-size must be <= 8"),
        ("simple", json.dumps(simple_body(outputs=[{"name": "OUTPUT7"}])), 400, "unknown output 'OUTPUT7'"),
        ("simple", json.dumps({"inputs": [dict(two_inputs[0], shape=[1, 17])]}), 400, "needs 17 elements"),
        ("simple", b"", 400, "body is empty"),
        ("simple", b" " * (MAX_REQUEST_BYTES + 1), 413, "exceeds the limit"),
        ("nope", json.dumps(simple_body()), 404, "Request for unknown model: 'nope' is not found"),
    ]


@pytest.mark.parametrize("model, body, status, message", bad_requests())
def test_bad_requests_get_a_clear_error_and_the_model_keeps_serving(server, model, body, status, message):
    response = requests.post(f"{server}/v2/models/{model}/infer", data=body, timeout=30)
    assert response.status_code == status
    assert message in response.json()["error"]
    assert "Traceback" not in response.text
    good = requests.post(f"{server}/v2/models/simple/infer", json=simple_body(), timeout=30)
    assert good.status_code == 200


@pytest.mark.parametrize(
    "method, path, status",
    [("GET", "/v2/models/simple/versions/7", 404), ("POST", "/v2/models/simple/versions/7/infer", 404),
     ("GET", "/v2/models/nope/config", 404), ("GET", "/v1/models", 404), ("DELETE", "/v2/models/simple", 404)],
)
def test_unknown_routes_models_and_versions(server, method, path, status):
    response = requests.request(method, server + path, json=simple_body(), timeout=30)
    assert response.status_code == status and response.json()["error"]


def test_concurrent_requests_are_batched_and_all_correct(server, repository):
    def counts() -> tuple[int, int]:  # summed over every replica running the model (the Ingress colocates it)
        rows = requests.get(f"{server}/v2/models/batched_mlp/stats", timeout=30).json()["model_stats"]
        return sum(r["execution_count"] for r in rows), sum(r["inference_count"] for r in rows)

    before = settled(counts)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((1 + i % 3, 64)).astype(np.float32) for i in range(32)]

    def call(x):
        body = {"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
        return requests.post(f"{server}/v2/models/batched_mlp/infer", json=body, timeout=60)

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(call, xs))
    runner = local(repository, "batched_mlp")
    for x, response in zip(xs, responses):
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        (expected,) = runner.execute([runner.prepare({"INPUT0": x})])
        np.testing.assert_allclose(np.array(output["data"]).reshape(output["shape"]), expected["OUTPUT0"], rtol=1e-4, atol=1e-5)
    rows = sum(x.shape[0] for x in xs)
    wait_for(lambda: counts()[1] - before[1] == rows, timeout_s=30, what=f"statistics of {rows} rows")
    executions = counts()[0] - before[0]
    assert 1 <= executions < len(xs), f"{len(xs)} requests ran in {executions} executions"


def test_backend_error_fails_its_caller_only(server):
    bad = requests.post(f"{server}/v2/models/flaky/infer", timeout=30, json={
        "inputs": [{"name": "X", "shape": [1, 1], "datatype": "INT64", "data": [-1]}]})
    assert bad.status_code == 500
    # the exception's text stays in the server log: it may hold paths, data or code
    assert bad.json()["error"] == "model 'flaky' version 1 failed: ValueError (the server log has the details)"
    good = requests.post(f"{server}/v2/models/flaky/infer", timeout=30, json={
        "inputs": [{"name": "X", "shape": [1, 1], "datatype": "INT64", "data": [4]}]})
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [8]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(client, algorithm):
    x = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [httpclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in inputs:
        tensor.set_data_from_numpy(x)
    result = client.infer("simple", inputs, request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 2 * x)


def test_compressed_body_is_limited_after_decompression(server):
    import gzip

    bomb = gzip.compress(b" " * (MAX_REQUEST_BYTES * 4))
    response = requests.post(f"{server}/v2/models/simple/infer", data=bomb,
                             headers={"Content-Encoding": "gzip"}, timeout=30)
    assert response.status_code == 413 and "decompressed" in response.json()["error"]


def test_request_parameters_reach_the_model(client):
    import json as jsonlib

    x = httpclient.InferInput("X", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[1]], np.int32))
    result = client.infer("params", [x], parameters={"temperature": 0.5, "tag": "a"})
    assert jsonlib.loads(result.as_numpy("PARAMS")[0, 0]) == {"temperature": 0.5, "tag": "a"}


def test_the_default_control_mode_refuses_loads_unloads_and_uploads(client, server):
    """Triton's poll mode (ric's default): nobody who reaches the port may change what is served, let alone
    upload a Python model for the server to run; the answer is Triton's text, and serving goes on."""
    for call in (lambda: client.load_model("mlp"), lambda: client.unload_model("mlp"),
                 lambda: client.load_model("uploaded", config='{"backend": "python"}',
                                           files={"file:1/model.py": b"import os\nos.system('true')\n"})):
        with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
            call()
    response = requests.post(f"{server}/v2/repository/models/mlp/unload", json={}, timeout=30)
    assert response.status_code == 503 and "model control mode 'poll'" in response.json()["error"]
    assert client.is_model_ready("mlp") and not any(row["name"] == "uploaded"
                                                    for row in client.get_model_repository_index())
