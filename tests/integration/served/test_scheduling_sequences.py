"""Triton's sequence batcher over HTTP, gRPC and handles: every request of a sequence reaches the one replica
that holds it, in order, with its control tensors; sequences spread over replicas; a sequence the replica
does not hold (never started, idle too long, its replica lost) answers a clear error, never a fresh state."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import wait_for


def step(module, client, correlation_id, value: int, start=False, end=False, rows=1):
    x = module.InferInput("X", [rows, 1], "INT64")
    x.set_data_from_numpy(np.full((rows, 1), value, np.int64))
    result = client.infer("accumulate", [x], sequence_id=correlation_id, sequence_start=start, sequence_end=end)
    return {name: result.as_numpy(name) for name in ("SUM", "PID", "ENDED", "ID")}


def test_interleaved_sequences_each_keep_their_replica_and_order(transport):
    module, client = transport
    ids = [1000 + i for i in range(8)] + [f"seq-{i}" for i in range(8)]  # integer and string correlation ids
    sums = {cid: 0 for cid in ids}
    pids: dict = {}
    for turn in range(4):  # round-robin over the sequences: each request's neighbours belong to others
        for n, cid in enumerate(ids):
            value = n + 10 * turn
            sums[cid] += value
            got = step(module, client, cid, value, start=turn == 0, end=turn == 3)
            assert got["SUM"][0, 0] == sums[cid], (cid, turn)
            assert bool(got["ENDED"][0, 0]) == (turn == 3)
            assert got["ID"][0, 0] == str(cid).encode()
            pids.setdefault(cid, set()).add(int(got["PID"][0, 0]))
    assert all(len(p) == 1 for p in pids.values()), pids  # one replica per sequence
    assert len(set().union(*pids.values())) == 2  # 16 sequences over both replicas


def test_a_batch_of_rows_in_one_sequence_request(transport):
    module, client = transport
    got = step(module, client, 77, 3, start=True, rows=4)
    assert got["SUM"].tolist() == [[12]] * 4
    assert step(module, client, 77, 1, end=True, rows=2)["SUM"].tolist() == [[14]] * 2


def test_requests_outside_a_held_sequence_get_triton_errors(transport):
    module, client = transport
    with pytest.raises(InferenceServerException, match="inference request for sequence 4242 to model 'accumulate' "
                                                       "must specify the START flag on the first request"):
        step(module, client, 4242, 1)
    x = module.InferInput("X", [1, 1], "INT64")
    x.set_data_from_numpy(np.ones((1, 1), np.int64))
    with pytest.raises(InferenceServerException, match="must specify a non-zero or non-empty correlation ID"):
        client.infer("accumulate", [x])
    step(module, client, 4243, 1, start=True, end=True)
    with pytest.raises(InferenceServerException, match="it ended"):
        step(module, client, 4243, 1)


def test_an_idle_sequence_is_released(transport):
    module, client = transport
    step(module, client, "idle", 5, start=True)
    time.sleep(2.0)  # max_sequence_idle_microseconds is 1.5 s
    with pytest.raises(InferenceServerException, match="idle for more than 1.5 s"):
        step(module, client, "idle", 1)


def test_sequences_through_handles_reach_the_same_replica():
    """A Ray job's handle routes by the sequence too (the router runs in the caller)."""
    from ray import serve

    from cluster.names import APP_NAME

    handle = serve.get_deployment_handle("accumulate", app_name=APP_NAME)
    total, pids = 0, set()
    for turn in range(5):
        x = np.full((1, 1), turn, np.int64)
        parameters = {"sequence_id": "handle-seq", "sequence_start": turn == 0, "sequence_end": turn == 4}
        _, outputs = handle.infer_versioned.remote({"X": x}, None, None, parameters).result(timeout_s=30)
        total += turn
        assert outputs["SUM"][0, 0] == total
        pids.add(int(outputs["PID"][0, 0]))
    assert len(pids) == 1


def test_sequences_over_one_grpc_stream_keep_their_order(endpoints):
    """tritonclient's stream (ModelStreamInfer): requests of several sequences sent at once without waiting;
    each sequence's requests run in the order sent, every one is answered, an error goes on the stream.
    (Every call the ingress makes for one stream shares its request id: the router must still give each
    its own replica, and not spin on one it cannot place.)"""
    answers: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(endpoints.grpc)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        ids, expected = ["stream-a", 5005, "stream-c", 5006, 5007, "stream-f", 5008, "stream-h"], {}
        for turn in range(4):
            for cid in ids:
                x = grpcclient.InferInput("X", [1, 1], "INT64")
                x.set_data_from_numpy(np.full((1, 1), turn + 1, np.int64))
                client.async_stream_infer("accumulate", [x], request_id=f"{cid}/{turn}", sequence_id=cid,
                                          sequence_start=turn == 0, sequence_end=turn == 3)
                expected[f"{cid}/{turn}"] = sum(range(1, turn + 2))
        x = grpcclient.InferInput("X", [1, 1], "INT64")
        x.set_data_from_numpy(np.ones((1, 1), np.int64))
        client.async_stream_infer("nope", [x], request_id="bad")
        got, errors = {}, []
        for _ in range(len(expected) + 1):
            result, error = answers.get(timeout=60)
            if error is not None:
                errors.append(error.message())
            else:
                got[result.get_response().id] = int(result.as_numpy("SUM")[0, 0])
        assert got == expected
        assert errors == ["Request for unknown model: 'nope' is not found"]
    finally:
        client.stop_stream()


def test_many_sequences_at_once_each_reach_their_replica(endpoints):
    """16 sequences in flight together (each waits for its answer before its next request): the router
    must give each request the replica chosen for it, not the oldest waiting request's (Serve's FIFO
    matching did, and broke sequences within seconds)."""
    import tritonclient.grpc.aio as grpcaio

    async def run():
        client = grpcaio.InferenceServerClient(endpoints.grpc)

        async def sequence(cid: int) -> list[int]:
            sums = []
            for step in range(6):
                x = grpcclient.InferInput("X", [1, 1], "INT64")
                x.set_data_from_numpy(np.full((1, 1), step, np.int64))
                result = await client.infer("accumulate", [x], sequence_id=cid, sequence_start=step == 0,
                                            sequence_end=step == 5)
                sums.append(int(result.as_numpy("SUM")[0, 0]))
            return sums

        try:
            return await asyncio.gather(*(sequence(7000 + n) for n in range(16)))
        finally:
            await client.close()

    for _ in range(3):
        assert asyncio.run(asyncio.wait_for(run(), 120)) == [[0, 1, 3, 6, 10, 15]] * 16


def test_a_lost_replica_fails_its_sequences_clearly_and_new_ones_start(server):
    """Killing the replica that holds a sequence: its next request is refused (no silent restart from an
    empty state), and new sequences run on the replicas Serve has then."""
    def post(cid, value, start=False):
        body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "INT64", "data": [value]}],
                "parameters": {"sequence_id": cid, "sequence_start": start}}
        return requests.post(f"{server}/v2/models/accumulate/infer", json=body, timeout=60)

    started = post(9001, 5, start=True)
    assert started.status_code == 200
    pid = next(o for o in started.json()["outputs"] if o["name"] == "PID")["data"][0]
    os.kill(pid, signal.SIGKILL)
    after = post(9001, 1)
    assert after.status_code in (400, 503), after.text
    assert "START" in after.json()["error"] or "lost" in after.json()["error"], after.text
    wait_for(lambda: post(9002, 1, start=True).status_code == 200, timeout_s=120, what="a new sequence to start")


def test_implicit_state_is_kept_per_sequence(server):
    """An ONNX model with Triton's implicit state: each request reads what the sequence's last one wrote;
    the state output is not answered."""
    def post(cid, value, start=False):
        body = {"inputs": [{"name": "INPUT", "shape": [1, 1], "datatype": "FP32", "data": [value]}],
                "parameters": {"sequence_id": cid, "sequence_start": start}}
        response = requests.post(f"{server}/v2/models/stateful/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        assert output["name"] == "OUTPUT"
        return output["data"][0]

    assert [post("s1", 2, start=True), post("s2", 10, start=True), post("s1", 3), post("s2", 1), post("s1", 4),
            post("s1", 1, start=True)] == [2, 10, 5, 11, 9, 1]
