"""Triton's Python backend on Ray: BLS calls (``InferenceRequest.exec()`` / ``async_exec()``) from a model to
the application's models, and the request API a model reads (request id, requested outputs, correlation id,
flags, timeout), served both ways a Python model runs: in its own deployment (calls through Serve handles)
and colocated in the ingress (in a stub process whose calls come up its pipe, then in process or through a
handle). Errors keep Triton's codes: a model's TritonError decides the status, a call that would wait for
itself is refused, a decoupled model over ``/infer`` is 501."""

from __future__ import annotations

import concurrent.futures
import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import serve_repository, wait_for
from tests.conftest import write_model
from tests.integration.python_models import INTROSPECT_TENSORS, python, write_repository

# Calls add_sub from initialize and answers what it got: during the replica's first load, a clear refusal.
AT_START = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        x = pb_utils.Tensor("INPUT0", np.zeros((1, 4), np.int32))
        answer = pb_utils.InferenceRequest(model_name="add_sub", inputs=[x, pb_utils.Tensor("INPUT1", x.as_numpy())],
                                           requested_output_names=["OUTPUT0"]).exec()
        self.seen = answer.error().message() if answer.has_error() else "answered"

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("INFO", np.array([self.seen.encode()], object)),
                                            pb_utils.Tensor("OTHER", np.array([0], np.int32))])
                for _ in requests]
"""


# Answers X with response parameters (Triton 2.51's Python backend has no response parameters; later ones do).
PARAMETERS = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.get_input_tensor_by_name(r, "X")],
                                           parameters={"answer": 42, "note": "hi", "exact": True, "ratio": 0.5})
                for r in requests]
"""


# Decoupled: sends Y = 1, then waits for the file its "path" parameter names (its caller makes it on seeing
# that first response) before Y = 2; an error response if it never comes.
HANDSHAKE = """
import json, os, time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender, path = request.get_response_sender(), json.loads(request.parameters())["path"]
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([1], np.int32))]))
            until = time.monotonic() + 20
            while not os.path.exists(path) and time.monotonic() < until:
                time.sleep(0.01)
            if os.path.exists(path):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([2], np.int32))]))
            else:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("no one saw my first response")))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

# Calls handshake (exec(decoupled=True)) and makes its file once the first response is in; answers the sum.
STREAMER = """
import json, pathlib
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            call = pb_utils.InferenceRequest(model_name="handshake", requested_output_names=["Y"],
                                             inputs=[pb_utils.get_input_tensor_by_name(request, "N")],
                                             parameters={"path": params["path"]})
            ys, failed = [], None
            for response in call.exec(decoupled=True):
                if response.has_error():
                    failed = response.error().message()
                elif (y := pb_utils.get_output_tensor_by_name(response, "Y")) is not None:
                    ys.append(int(y.as_numpy()[0]))
                    pathlib.Path(params["path"]).touch()
            if failed:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(failed)))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([sum(ys)], np.int32)),
                                                         pb_utils.Tensor("COUNT", np.array([len(ys)], np.int32))]))
        return responses
"""


@pytest.fixture(scope="module", params=["own deployments", "colocated in stubs"])
def server(request, tmp_path_factory):
    root = write_repository(tmp_path_factory.mktemp("repository"))
    write_model(root, "at_start", python("at_start", "", INTROSPECT_TENSORS, 0), {"1/model.py": AT_START})
    tensors = ('input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
               'output [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]')
    write_model(root, "parameters", python("parameters", "", tensors, 0), {"1/model.py": PARAMETERS})
    write_model(root, "handshake", python("handshake", "model_transaction_policy { decoupled: true }",
                                          'input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                                          'output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]', 0),
                {"1/model.py": HANDSHAKE})
    write_model(root, "streamer", python("streamer", "", 'input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                                         'output [ { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] }, '
                                         '{ name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]', 0),
                {"1/model.py": STREAMER})
    colocated = request.param == "colocated in stubs"
    # (each model has a deployment whose replica takes 0.25 CPUs, beside the ingress: 16 models here)
    with serve_repository(root, num_cpus=8, colocate=colocated, colocate_python=colocated,
                          model_control_mode="explicit") as endpoints:
        yield endpoints


def add_sub_body(parameters: dict | None = None, rows: int = 2) -> dict:
    x = np.arange(4 * rows, dtype=np.int32).reshape(rows, 4)
    body = {"inputs": [{"name": "INPUT0", "shape": [rows, 4], "datatype": "INT32", "data": x.ravel().tolist()},
                       {"name": "INPUT1", "shape": [rows, 4], "datatype": "INT32", "data": [1] * 4 * rows}]}
    if parameters:
        body["parameters"] = parameters
    return body


def infer(server, model: str, body: dict) -> requests.Response:
    return requests.post(f"{server.http}/v2/models/{model}/infer", json=body, timeout=120)


def outputs(answer: requests.Response) -> dict[str, list]:
    assert answer.status_code == 200, answer.text
    return {o["name"]: o["data"] for o in answer.json()["outputs"]}


def test_bls_exec_calls_another_model_and_gets_only_the_outputs_it_asked_for(server):
    got = outputs(infer(server, "bls", add_sub_body()))
    assert got["OUTPUT0"] == [i + 1 for i in range(8)]
    assert got["OUTPUT1"] == [1] * 8  # the callee answered OUTPUT0 alone


def test_async_exec_calls_gathered_run_together_and_all_answer(server):
    got = outputs(infer(server, "bls", add_sub_body({"fan_out": 5})))
    assert got["OUTPUT0"] == [5 * (i + 1) for i in range(8)]


def test_an_ensemble_is_a_callee_like_any_model(server):
    assert outputs(infer(server, "bls", add_sub_body({"target": "ensemble"})))["OUTPUT0"] == [i + 1 for i in range(8)]


def test_a_decoupled_callee_answers_the_call_with_all_its_responses(server):
    body = {"inputs": [{"name": "N", "shape": [1], "datatype": "INT32", "data": [4]}]}
    assert outputs(infer(server, "bls_stream", body)) == {"SUM": [10], "COUNT": [4]}


def test_a_decoupled_callees_responses_reach_the_caller_one_by_one(server, tmp_path):
    """The callee waits for its caller to have seen its first response: answered only if they come one by one."""
    body = {"inputs": [{"name": "N", "shape": [1], "datatype": "INT32", "data": [2]}],
            "parameters": {"path": str(tmp_path / "seen")}}
    assert outputs(infer(server, "streamer", body)) == {"SUM": [3], "COUNT": [2]}


def test_a_call_to_an_unknown_model_is_the_callers_error_with_tritons_code_and_words(server):
    answer = infer(server, "bls", add_sub_body({"target": "nope"}))
    assert answer.status_code == 500, answer.text
    assert "Failed for execute the inference request. Model 'nope' is not ready" in answer.json()["error"]
    assert "Request for unknown model: 'nope' is not found" in answer.json()["error"]


def test_a_model_calling_itself_is_refused_not_deadlocked_and_serves_on(server):
    answer = infer(server, "bls", add_sub_body({"target": "bls"}))
    assert answer.status_code == 400, answer.text
    assert "bls -> bls" in answer.json()["error"] and "wait for itself" in answer.json()["error"]
    assert infer(server, "bls", add_sub_body()).status_code == 200


def test_the_request_api_tells_the_model_the_id_and_outputs_the_client_asked_for(server):
    body = {"id": "req-7", "inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [1]}],
            "outputs": [{"name": "INFO"}], "parameters": {"timeout": 5_000_000}}
    answer = infer(server, "introspect", body)
    seen = json.loads(outputs(answer)["INFO"][0])
    assert answer.json()["id"] == "req-7"
    assert seen == {"id": "req-7", "requested": ["INFO"], "correlation_id": 0, "flags": 0, "timeout": 5_000_000,
                    "cpu": True, "ready": [True, False, True, False]}
    del body["outputs"]
    everything = json.loads(outputs(infer(server, "introspect", body))["INFO"][0])
    assert everything["requested"] == ["INFO", "OTHER"]


@pytest.mark.parametrize("sequence_id", [42, "user-42"])
def test_a_sequence_model_reads_its_correlation_id_and_start_end_flags(server, sequence_id):
    def step(**flags):
        body = {"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [1]}],
                "parameters": {"sequence_id": sequence_id, **flags}}
        return json.loads(outputs(infer(server, "sequence", body))["INFO"][0])

    first, middle, last = step(sequence_start=True), step(), step(sequence_end=True)
    assert [first["correlation_id"], middle["correlation_id"], last["correlation_id"]] == [sequence_id] * 3
    assert [first["flags"], middle["flags"], last["flags"]] == [1, 0, 2]


@pytest.mark.parametrize("code, http, grpc_code", [
    ("", 500, "StatusCode.INTERNAL"), ("INVALID_ARG", 400, "StatusCode.INVALID_ARGUMENT"),
    ("UNAVAILABLE", 503, "StatusCode.UNAVAILABLE"), ("UNSUPPORTED", 501, "StatusCode.UNIMPLEMENTED")])
def test_a_models_triton_error_code_decides_the_status_as_on_triton(server, code, http, grpc_code):
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [1]}], "parameters": {"fail": code}}
    answer = infer(server, "introspect", body)
    assert answer.status_code == http and "failed on purpose" in answer.json()["error"], answer.text
    x = grpcclient.InferInput("X", [1], "INT32")
    x.set_data_from_numpy(np.array([1], np.int32))
    with pytest.raises(InferenceServerException) as raised:
        grpcclient.InferenceServerClient(server.grpc).infer("introspect", [x], parameters={"fail": code})
    assert raised.value.status() == grpc_code and "failed on purpose" in raised.value.message()


def test_a_decoupled_model_over_infer_is_unimplemented_as_on_triton(server):
    body = {"inputs": [{"name": "N", "shape": [1], "datatype": "INT32", "data": [2]}]}
    answer = infer(server, "counter", body)
    assert answer.status_code == 501 and "decoupled" in answer.json()["error"], answer.text


def test_a_call_from_initialize_while_the_replica_starts_is_refused_not_hung(server):
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [1]}]}
    seen = outputs(infer(server, "at_start", body))["INFO"][0]
    assert "from initialize while its replica starts" in seen


def test_a_responses_parameters_reach_the_client_over_http_and_grpc(server):
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [3]}]}
    expected = {"answer": 42, "note": "hi", "exact": True, "ratio": 0.5}
    answer = infer(server, "parameters", body)
    assert answer.json()["parameters"] == expected and outputs(answer) == {"X": [3]}
    x = grpcclient.InferInput("X", [1], "INT32")
    x.set_data_from_numpy(np.array([3], np.int32))
    got = grpcclient.InferenceServerClient(server.grpc).infer("parameters", [x]).get_response().parameters
    assert {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in got.items()} == expected


def metric(server, line_start: str) -> float:
    """A sample's value in /metrics (0 when it is not there yet)."""
    text = requests.get(f"{server.http}/metrics", timeout=30).text
    return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)), 0.0)


def patient(server, seconds: float, client_timeout: float | None = None):
    x = grpcclient.InferInput("X", [1], "FP32")
    x.set_data_from_numpy(np.array([seconds], np.float32))
    return grpcclient.InferenceServerClient(server.grpc).infer("patient", [x], client_timeout=client_timeout)


def test_a_client_gone_cancels_its_request_the_running_one_sees_it_a_queued_one_never_runs(server):
    ran, seen = 'patient_requests{what="ran"}', 'patient_requests{what="cancelled"}'
    canceled = 'nv_inference_request_failure{model="patient",version="1",reason="CANCELED"}'
    before = {key: metric(server, key) for key in (ran, seen, canceled)}
    with pytest.raises(InferenceServerException, match="Deadline"):
        patient(server, 30, client_timeout=0.5)  # the model sees is_cancelled() and stops
    wait_for(lambda: metric(server, seen) == before[seen] + 1, 30, "the model to see the cancellation")
    with pytest.raises(requests.exceptions.Timeout):  # an HTTP client that hangs up: the same
        requests.post(f"{server.http}/v2/models/patient/infer", timeout=0.5,
                      json={"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [30]}]})
    wait_for(lambda: metric(server, seen) == before[seen] + 2, 30, "the model to see the HTTP client gone")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy = pool.submit(patient, server, 2)  # the model's one instance is busy for 2 s
        time.sleep(0.5)
        with pytest.raises(InferenceServerException, match="Deadline"):
            patient(server, 0.1, client_timeout=0.5)  # gives up while queued behind it
        busy.result(timeout=60)
    wait_for(lambda: metric(server, canceled) == before[canceled] + 1, 30, "the queued request to be dropped")
    assert metric(server, ran) == before[ran] + 3  # the dropped one never ran
    assert patient(server, 0).as_numpy("Y").tolist() == [1]


def test_a_bls_call_with_its_requests_trace_is_a_span_of_that_trace_with_the_callee_below(server):
    def post(path: str, body: dict) -> dict:
        answer = requests.post(f"{server.http}{path}", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    path = Path(post("/v2/trace/setting", {"trace_file": "bls.jsonl"})["trace_file"])
    post("/v2/models/bls/trace/setting", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "1"})
    try:
        assert infer(server, "bls", add_sub_body()).status_code == 200

        def spans() -> list[dict]:
            return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

        wait_for(lambda: {"BLS add_sub", "model add_sub"} <= {s["name"] for s in spans()}, 60,
                 lambda: f"the call's spans: {[s['name'] for s in spans()]}")
        by_name = {s["name"]: s for s in spans()}
        root, call, callee = by_name["infer bls"], by_name["BLS add_sub"], by_name["model add_sub"]
        assert root["parent_id"] is None and call["parent_id"] == root["span_id"]
        assert callee["parent_id"] == call["span_id"] and call["trace_id"] == callee["trace_id"] == root["trace_id"]
        assert call["attributes"]["caller"] == "bls"
    finally:
        post("/v2/models/bls/trace/setting", {"trace_level": None, "trace_rate": None, "trace_count": None})
        post("/v2/trace/setting", {"trace_file": None})


def test_an_ensemble_unloads_with_its_steps_given_unload_dependents_and_a_model_loads_them_back(server):
    """Triton's unload_dependents (stock tritonclient), and pb_utils.load_model from a model in explicit mode."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http.removeprefix("http://"))
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [1]}]}

    def control(**parameters) -> str:
        return outputs(infer(server, "controller", {**body, "parameters": parameters}))["INFO"][0]

    with pytest.raises(InferenceServerException, match="follow their steps"):
        client.unload_model("ensemble")
    not_a_bool = requests.post(f"{server.http}/v2/repository/models/ensemble/unload", timeout=30,
                               json={"parameters": {"unload_dependents": "yes"}})
    assert not_a_bool.status_code == 400 and "Unable to parse 'unload_dependents'" in not_a_bool.json()["error"]
    try:
        client.unload_model("ensemble", unload_dependents=True)
        assert control(ready="add_sub") == "False" and not client.is_model_ready("add_sub")
        assert infer(server, "ensemble", add_sub_body()).status_code == 503
    finally:
        assert control(load="add_sub") == "done"
    assert control(ready="add_sub") == "True"
    assert outputs(infer(server, "ensemble", add_sub_body()))["OUTPUT0"] == [i + 1 for i in range(8)]
    assert "cannot be unloaded while its own batch waits" in control(unload="controller")
