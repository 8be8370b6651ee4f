"""Triton's Python backend on Ray: BLS calls (``InferenceRequest.exec()`` / ``async_exec()``) from a model to
the application's models, and the request API a model reads (request id, requested outputs, correlation id,
flags, timeout), served both ways a Python model runs: in its own deployment (calls through Serve handles)
and colocated in the ingress (in a stub process whose calls come up its pipe, then in process or through a
handle). Errors keep Triton's codes: a model's TritonError decides the status, a call that would wait for
itself is refused, a decoupled model over ``/infer`` is 501."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.conftest import write_model
from tests.integration.conftest import serve_repository

ADD_SUB = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x + y),
                                                         pb_utils.Tensor("OUTPUT1", x - y)]))
        return responses
"""

TENSORS = """
  input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 4 ] },
          { name: "INPUT1" data_type: TYPE_INT32 dims: [ 4 ] } ]
  output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 4 ] },
           { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 4 ] } ]
"""

# Calls the model its "target" parameter names (add_sub by default), asking for OUTPUT0 only, once with
# exec() or "fan_out" times at once with async_exec(); answers the sum and how many tensors one answer held.
# The callee's error becomes its own, code and all.
BLS = """
import asyncio
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in ("INPUT0", "INPUT1")]
            call = pb_utils.InferenceRequest(model_name=params.get("target", "add_sub"), inputs=inputs,
                                             requested_output_names=["OUTPUT0"])
            fan_out = params.get("fan_out", 0)
            answers = await asyncio.gather(*(call.async_exec() for _ in range(fan_out))) if fan_out else [call.exec()]
            failed = next((a for a in answers if a.has_error()), None)
            if failed is not None:
                error = pb_utils.TritonError(failed.error().message(), failed.error().code())
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            total = sum(pb_utils.get_output_tensor_by_name(a, "OUTPUT0").as_numpy() for a in answers)
            held = np.full_like(total, len(answers[0].output_tensors()))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total),
                                                         pb_utils.Tensor("OUTPUT1", held)]))
        return responses
"""

# Decoupled: N responses, Y = 1..N.
COUNTER = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            for i in range(1, n + 1):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

# Calls the decoupled counter and answers the sum and count of its responses.
BLS_STREAM = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            call = pb_utils.InferenceRequest(model_name="counter", requested_output_names=["Y"],
                                             inputs=[pb_utils.get_input_tensor_by_name(request, "N")])
            ys = [int(pb_utils.get_output_tensor_by_name(r, "Y").as_numpy()[0]) for r in call.exec(decoupled=True)]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.array([sum(ys)], np.int32)),
                                                         pb_utils.Tensor("COUNT", np.array([len(ys)], np.int32))]))
        return responses
"""

# What the request API tells a model, as JSON; with "fail" a TritonError of that code.
INTROSPECT = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            params = json.loads(request.parameters())
            if "fail" in params:  # a TritonError of that code (-1: the default code)
                code = params["fail"]
                error = pb_utils.TritonError("failed on purpose", *([code] if code >= 0 else []))
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            seen = {"id": request.request_id(), "requested": request.requested_output_names(),
                    "correlation_id": request.correlation_id(), "flags": request.flags(),
                    "timeout": request.timeout(), "cpu": pb_utils.get_input_tensor_by_name(request, "X").is_cpu()}
            pb_utils.Logger.log_info("introspected")
            info = np.array([json.dumps(seen).encode()], object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("INFO", info),
                                                         pb_utils.Tensor("OTHER", np.array([0], np.int32))]))
        return responses
"""

INTROSPECT_TENSORS = """
  input [ { name: "X" data_type: TYPE_INT32 dims: [ 1 ] } ]
  output [ { name: "INFO" data_type: TYPE_STRING dims: [ 1 ] }, { name: "OTHER" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

ENSEMBLE = """
platform: "ensemble"
max_batch_size: 8
""" + TENSORS + """
ensemble_scheduling { step [ { model_name: "add_sub" model_version: -1
  input_map { key: "INPUT0" value: "INPUT0" } input_map { key: "INPUT1" value: "INPUT1" }
  output_map { key: "OUTPUT0" value: "OUTPUT0" } output_map { key: "OUTPUT1" value: "OUTPUT1" } } ] }
"""


def python(name: str, extra: str = "", tensors: str = TENSORS, batch: int = 8) -> str:
    return f'name: "{name}"\nbackend: "python"\nmax_batch_size: {batch}\n{extra}\n{tensors}'


@pytest.fixture(scope="module", params=["own deployments", "colocated in stubs"])
def server(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "add_sub", python("add_sub", "dynamic_batching {}"), {"1/model.py": ADD_SUB})
    write_model(root, "bls", python("bls", "dynamic_batching {}"), {"1/model.py": BLS})
    write_model(root, "counter", python("counter", "model_transaction_policy { decoupled: true }",
                                        'input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
                                        'output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]', 0),
                {"1/model.py": COUNTER})
    sums = ('input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]\n'
            'output [ { name: "SUM" data_type: TYPE_INT32 dims: [ 1 ] }, '
            '{ name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] } ]')
    write_model(root, "bls_stream", python("bls_stream", "", sums, 0), {"1/model.py": BLS_STREAM})
    write_model(root, "introspect", python("introspect", "", INTROSPECT_TENSORS, 0), {"1/model.py": INTROSPECT})
    write_model(root, "sequence", python("sequence", "sequence_batching { }", INTROSPECT_TENSORS, 0),
                {"1/model.py": INTROSPECT})
    write_model(root, "ensemble", ENSEMBLE, {"1/.keep": ""})
    colocated = request.param == "colocated in stubs"
    with serve_repository(root, num_cpus=4, colocate=colocated, colocate_python=colocated) as endpoints:
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


def test_a_call_to_an_unknown_model_is_the_callers_error_with_tritons_code(server):
    answer = infer(server, "bls", add_sub_body({"target": "nope"}))
    assert answer.status_code == 404, answer.text
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
                    "cpu": True}
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
    (-1, 500, "StatusCode.INTERNAL"), (3, 400, "StatusCode.INVALID_ARGUMENT"), (4, 503, "StatusCode.UNAVAILABLE"),
    (5, 501, "StatusCode.UNIMPLEMENTED")])
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
