"""gRPC, as a Triton user calls it: stock tritonclient.grpc (sync and asyncio) with no extra metadata, and
the raw service stub for requests a well-behaved client would never send."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.served.conftest import CASES, MAX_REQUEST_BYTES, echo_inputs, reference


@pytest.fixture(scope="module")
def client(endpoints):
    return grpcclient.InferenceServerClient(endpoints.grpc)


@pytest.fixture(scope="module")
def stub(endpoints):
    with grpc.insecure_channel(endpoints.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def grpc_inputs(inputs):
    tensors = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == object else grpcclient.np_to_triton_dtype(array.dtype)
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


@pytest.mark.parametrize("model", sorted(CASES))
def test_infer_gets_the_in_process_answer(client, repository, model):
    expected = reference(repository, model, CASES[model])
    outputs = [grpcclient.InferRequestedOutput(name) for name in expected]
    result = client.infer(model, grpc_inputs(CASES[model]), outputs=outputs, request_id="g-1")
    assert result.get_response().id == "g-1" and result.get_response().model_version == "1"
    for name, array in expected.items():
        got = result.as_numpy(name)
        if array.dtype == object:
            assert got.tolist() == array.tolist()
        else:
            np.testing.assert_allclose(got, array, rtol=1e-5)


def test_every_datatype_round_trips(client):
    inputs = echo_inputs()
    result = client.infer("echo", grpc_inputs(inputs))
    for name, array in inputs.items():
        got = result.as_numpy(name.replace("IN_", "OUT_"))
        assert got.dtype == array.dtype and got.tolist() == array.tolist()


def test_server_and_model_rpcs(client):
    assert client.is_server_live()
    assert not client.is_server_ready()  # strict: the repository holds two broken models
    assert client.get_server_metadata().name == "triton"
    assert client.is_model_ready("simple") and client.is_model_ready("simple", "1")
    assert not client.is_model_ready("broken_model")
    metadata = client.get_model_metadata("simple", as_json=True)
    assert metadata["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": ["-1", "16"]}
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["input"][0]["dims"] == ["64"] and config["max_batch_size"] == 64
    index = {m["name"]: m for m in client.get_model_repository_index(as_json=True)["models"]}
    assert index["simple"]["state"] == "READY" and "max_batch_sise" in index["broken_config"]["reason"]
    ready_only = client.get_model_repository_index(as_json=True)
    assert ready_only["models"]


@pytest.mark.parametrize(
    "model, inputs, status, message",
    [
        ("simple", {"INPUT0": np.zeros((1, 16), np.float32), "INPUT1": np.zeros((1, 16), np.int32)},
         "StatusCode.INVALID_ARGUMENT", "data-type is 'FP32', but model 'simple' expects 'INT32'"),
        ("simple", {"INPUT0": np.zeros((1, 15), np.int32), "INPUT1": np.zeros((1, 15), np.int32)},
         "StatusCode.INVALID_ARGUMENT", "Expected [-1,16]"),
        ("nope", {"INPUT0": np.zeros((1, 16), np.int32)}, "StatusCode.NOT_FOUND", "Request for unknown model: 'nope' is not found"),
        ("broken_model", {"INPUT0": np.zeros((1, 64), np.float32)}, "StatusCode.UNAVAILABLE", "has no available versions"),
        ("broken_config", {"INPUT0": np.zeros((1, 64), np.float32)}, "StatusCode.UNAVAILABLE", "has no available versions"),
        ("flaky", {"X": np.array([[-1]], np.int64)}, "StatusCode.INTERNAL", "version 1 failed: ValueError"),
    ],
)
def test_errors_carry_the_matching_status_and_the_model_keeps_serving(client, model, inputs, status, message):
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, grpc_inputs(inputs))
    assert info.value.status() == status
    assert message in info.value.message()
    ok = client.infer("simple", grpc_inputs(CASES["simple"]))
    assert ok.as_numpy("OUTPUT0").shape == (2, 16)


def raw_request(**overrides) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="text_stats")
    request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1])
    request.raw_input_contents.append(b"\x03\x00\x00\x00abc")
    for key, value in overrides.items():
        setattr(request, key, value) if not callable(value) else value(request)
    return request


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x09\x00\x00\x00abc"), "runs past the data"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x03\x00"), "cannot hold 1 BYTES elements"),
        (lambda r: r.raw_input_contents.append(b"x"), "2 raw_input_contents for 1 inputs"),
        (lambda r: r.inputs[0].contents.bytes_contents.append(b"abc"),  # Triton's words, which its clients check
         "contents field must not be specified when using raw_input_contents for 'TEXT' for model 'text_stats'"),
        (lambda r: r.inputs[0].__setattr__("datatype", "TEXT"), "unknown datatype 'TEXT'"),
        (lambda r: r.inputs[0].shape.__setitem__(0, -4), "negative dimension"),
        (lambda r: r.inputs[0].shape.extend([2**40]), "cannot hold 1099511627776 BYTES elements"),
    ],
)
def test_malformed_raw_requests_are_invalid_argument(stub, mutate, message):
    request = raw_request()
    mutate(request)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert stub.ModelInfer(raw_request(), timeout=30).raw_output_contents[1] == np.int64(3).tobytes()


def test_typed_contents(stub):
    request = service_pb2.ModelInferRequest(model_name="simple", id="typed")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        tensor.contents.int_contents.extend(range(16))
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "typed"
    assert np.frombuffer(response.raw_output_contents[0], np.int32).tolist() == [2 * i for i in range(16)]
    request.inputs[0].contents.int_contents.append(1)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "contents has 17" in info.value.details()


def test_asyncio_client_concurrently(endpoints, repository):
    expected = reference(repository, "simple", CASES["simple"])

    async def main():
        async with grpcaio.InferenceServerClient(endpoints.grpc) as aio:
            assert await aio.is_server_live()
            return await asyncio.gather(*(aio.infer("simple", grpc_inputs(CASES["simple"])) for _ in range(16)))

    for result in asyncio.run(main()):
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected["OUTPUT0"])


def test_request_parameters_reach_the_model(client):
    import json

    x = grpcclient.InferInput("X", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[1]], np.int32))
    result = client.infer("params", [x], parameters={"tag": "g", "n": 3, "flag": True})
    assert json.loads(result.as_numpy("PARAMS")[0, 0]) == {"tag": "g", "n": 3, "flag": True}


def test_the_default_control_mode_refuses_loads_and_unloads_as_unavailable(client):
    for call in (lambda: client.load_model("mlp"), lambda: client.unload_model("mlp")):
        with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed") as info:
            call()
        assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert client.is_model_ready("mlp")


def test_oversized_messages_are_refused_as_resource_exhausted_and_serving_goes_on(client):
    """The ingress replica's gRPC listener refuses them unread (grpc's own message, as Triton's server)."""
    big = np.zeros((1, MAX_REQUEST_BYTES // 4 + 16), np.float32)
    infer_input = grpcclient.InferInput("INPUT0", list(big.shape), "FP32")
    infer_input.set_data_from_numpy(big)
    for call in (lambda: client.infer("mlp", [infer_input]),
                 lambda: client.load_model("uploaded", config='{"backend": "onnxruntime"}',
                                           files={"file:1/model.onnx": bytes(MAX_REQUEST_BYTES + 1)})):
        with pytest.raises(InferenceServerException, match=f"larger than max .* vs. {MAX_REQUEST_BYTES}") as info:
            call()
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_model_ready("mlp")
