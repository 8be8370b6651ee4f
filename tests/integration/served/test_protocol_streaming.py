"""Decoupled (streaming) models: zero, one or many responses per request over gRPC ModelStreamInfer (stock
tritonclient, sync and asyncio), HTTP's generate extension (server-sent events) and handles; the example
text_generator (Triton's response sender) and countdown (a generator that fails part way)."""

from __future__ import annotations

import asyncio
import json
import queue

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from tests.integration.served.conftest import local

PROMPT = {"TEXT": np.array([b"hello"], dtype=object), "MAX_TOKENS": np.array([5], np.int32)}


def reference_tokens(repository) -> list[bytes]:
    """text_generator's tokens for PROMPT, run in this process."""
    runner, tokens = local(repository, "text_generator"), []
    runner.execute_stream(runner.prepare(dict(PROMPT)), lambda out, final: out and tokens.append(out["TOKEN"][0]))
    return tokens


def grpc_inputs(arrays):
    tensors = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "INT32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def collect_stream(endpoints, send) -> list:
    """Start a tritonclient stream, ``send(client)``, close it (which waits for the responses)."""
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(endpoints.grpc)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    send(client)
    client.stop_stream()
    return [answers.get_nowait() for _ in range(answers.qsize())]


def test_grpc_stream_gets_one_response_per_token_and_the_final_flag(endpoints, repository):
    expected = reference_tokens(repository)
    assert len(expected) == 5
    got = collect_stream(endpoints, lambda client: client.async_stream_infer(
        "text_generator", grpc_inputs(PROMPT), request_id="t1", enable_empty_final_response=True))
    assert all(error is None for _, error in got)
    responses = [result.get_response() for result, _ in got]
    assert [r.parameters["triton_final_response"].bool_param for r in responses] == [False] * 5 + [True]
    assert [result.as_numpy("TOKEN")[0] for result, _ in got[:5]] == expected
    assert {r.id for r in responses} == {"t1"} and not responses[-1].outputs


def test_a_failure_mid_stream_reaches_the_client_after_the_responses_before_it(endpoints):
    inputs = {"N": np.array([5], np.int32), "FAIL_AT": np.array([2], np.int32)}
    got = collect_stream(endpoints, lambda client: client.async_stream_infer("countdown", grpc_inputs(inputs)))
    assert [int(result.as_numpy("STEP")[0]) for result, error in got if error is None] == [5, 4, 3]
    (error,) = [error for _, error in got if error is not None]
    assert "model 'countdown' version 1 failed: ValueError" in error.message()
    ok = {"N": np.array([2], np.int32), "FAIL_AT": np.array([0], np.int32)}
    got = collect_stream(endpoints, lambda client: client.async_stream_infer("countdown", grpc_inputs(ok)))
    assert [int(result.as_numpy("STEP")[0]) for result, _ in got] == [2, 1]  # the replica serves on


def test_asyncio_stream_infer(endpoints, repository):
    async def run():
        client = grpcaio.InferenceServerClient(endpoints.grpc)

        async def requests_():
            yield {"model_name": "text_generator", "inputs": grpc_inputs(PROMPT), "request_id": "a"}

        tokens = [result.as_numpy("TOKEN")[0] async for result, error in client.stream_infer(requests_())]
        await client.close()
        return tokens

    assert asyncio.run(asyncio.wait_for(run(), 60)) == reference_tokens(repository)


def test_generate_stream_sends_server_sent_events(server, repository):
    response = requests.post(f"{server}/v2/models/text_generator/generate_stream",
                             json={"TEXT": "hello", "MAX_TOKENS": 5, "id": "g1"}, stream=True, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix(b"data: ")) for line in response.iter_lines() if line]
    assert [event["TOKEN"].encode() for event in events] == reference_tokens(repository)
    assert events[0] == {"model_name": "text_generator", "model_version": "1", "id": "g1", "TOKEN": events[0]["TOKEN"]}

    broken = requests.post(f"{server}/v2/models/countdown/generate_stream", json={"N": 4, "FAIL_AT": 2}, timeout=60)
    events = [json.loads(line.removeprefix(b"data: ")) for line in broken.iter_lines() if line]
    assert [event.get("STEP") for event in events[:-1]] == [4, 3]
    assert "ValueError" in events[-1]["error"]


def test_generate_answers_one_response_as_json(server):
    body = {"INPUT0": list(range(16)), "INPUT1": [1] * 16, "id": "s"}
    response = requests.post(f"{server}/v2/models/simple/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"model_name": "simple", "model_version": "1", "id": "s",
                               "OUTPUT0": list(range(1, 17)), "OUTPUT1": list(range(-1, 15))}
    one = requests.post(f"{server}/v2/models/text_generator/generate", json={"TEXT": "hi", "MAX_TOKENS": 1}, timeout=60)
    assert one.status_code == 200 and set(one.json()) == {"model_name", "model_version", "TOKEN"}
    many = requests.post(f"{server}/v2/models/text_generator/generate", json={"TEXT": "hi"}, timeout=60)
    assert many.status_code == 400 and "sent 8 responses" in many.json()["error"]


@pytest.mark.parametrize("path", ["infer", "generate_stream"])
def test_errors_before_the_first_response_keep_their_status(server, path):
    if path == "infer":  # a decoupled model over the one-response route, as Triton refuses it
        body = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
        status, message = 501, "is decoupled"
    else:
        body, status, message = {"TEXT": 5}, 400, "BYTES data must be strings"
    response = requests.post(f"{server}/v2/models/text_generator/{path}", json=body, timeout=60)
    assert response.status_code == status and message in response.json()["error"]
    missing = requests.post(f"{server}/v2/models/nope/{path}", json=body, timeout=60)
    assert missing.status_code == 404


def test_handles_stream_responses():
    """Another Ray job's client: ``stream`` and ``stream_async`` over the model's handle."""
    from ray import serve

    from cluster.client import Client, ModelClient
    from cluster.names import APP_NAME

    client = Client(APP_NAME)
    try:
        model = ModelClient("text_generator", serve.get_deployment_handle("text_generator", app_name=APP_NAME),
                            client._loop)
        tokens = [out["TOKEN"][0] for out in model.stream(PROMPT, timeout_s=60)]
        assert len(tokens) == 5

        async def collect():
            return [out["TOKEN"][0] async for out in model.stream_async(PROMPT)]

        assert asyncio.run(asyncio.wait_for(collect(), 60)) == tokens
        with pytest.raises(Exception, match="is decoupled"):
            model.infer(PROMPT, timeout_s=60)
    finally:
        client.close()
