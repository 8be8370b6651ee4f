"""cluster.client's way to a model through the ingress listener, against the real listener (HttpServer) and
the real binary codec: tensors of every kind round trip on one pooled connection, an error answer keeps its
code and message, calls beyond the pool wait for a connection, a cancelled call closes its connection (the
server drops the request), a connection the server closed while idle is not reused, one lost mid-answer
is UNAVAILABLE, a refused listener leaves the requests to the handle for a while, and the probe tells the
application's listener from another server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster import listener_client
from cluster.listener_client import Listener, ListenerRefused, ListenerRoute, probe
from cluster.protocol.codec import HEADER_LENGTH, decode_infer_request, encode_infer_response
from cluster.protocol.http_messages import HttpRequest, Reply, error_reply
from cluster.protocol.http_server import HttpServer, ServerLimits
from deployments.errors import ErrorCode, InferenceError
from tests.integration.conftest import free_port

SERVER_NAME = "triton"


class Model:
    """A route answering ``/v2/models/echo/infer`` with its inputs renamed OUT_<name> (the listener's codec),
    ``/v2`` with its name, and other models with an error; it counts requests and those cancelled."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s, self.served, self.cancelled, self.in_flight, self.most_in_flight = delay_s, [], 0, 0, 0

    async def __call__(self, request: HttpRequest) -> Reply:
        if request.path == "/v2":
            return Reply(200, b'{"name":"%s"}' % SERVER_NAME.encode(), "application/json")
        body = b"".join([chunk async for chunk in request.stream()])
        if request.path == "/v2/models/missing/infer":
            return error_reply(404, "Request for unknown model: 'missing' is not found")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        decoded = decode_infer_request(body, request.headers.get(HEADER_LENGTH))
        self.served.append((request.path, decoded.parameters))
        outputs = {f"OUT_{name}": array for name, array in decoded.inputs.items()}
        if decoded.outputs is not None:
            outputs = {name: outputs[name] for name in decoded.outputs}
        body, header_length = encode_infer_response("echo", 1, outputs, decoded)
        return Reply(200, body, "application/octet-stream",
                     {HEADER_LENGTH: str(header_length)} if header_length is not None else None)


async def listening(model: Model, limits: ServerLimits = ServerLimits()) -> tuple[HttpServer, ListenerRoute]:
    server = HttpServer(model, limits)
    await server.start("127.0.0.1", 0)
    return server, ListenerRoute(Listener("0.0.0.0", server.port, max_request_bytes=1 << 20), "echo")


async def infer(route: ListenerRoute, inputs, outputs=None, version=None, parameters=None):
    return await route.send(route.request(inputs, outputs, version, parameters))


def run(test):
    return asyncio.run(asyncio.wait_for(test(), 30))


def test_tensors_of_every_kind_round_trip_on_one_pooled_connection():
    async def test():
        model = Model()
        server, route = await listening(model)
        inputs = {"I32": np.arange(6, dtype=np.int32).reshape(2, 3), "F16": np.ones((1, 5), np.float16),
                  "BOOL": np.array([[True, False]]), "EMPTY": np.zeros((0, 4), np.float32),
                  "TEXT": np.array([[b"ray", "s\u00e9rve".encode()]], dtype=object),
                  "STRINGS": np.array(["a", "bc"]), "STRIDED": np.arange(20, dtype=np.float64)[::2]}
        for _ in range(3):
            answer = await infer(route, inputs, parameters={"sequence_id": np.int64(7), "sequence_start": True})
        assert sorted(answer) == sorted(f"OUT_{name}" for name in inputs)
        for name, array in inputs.items():
            got = answer[f"OUT_{name}"]
            expected = np.array([item.encode() for item in array], dtype=object) if array.dtype.kind == "U" else array
            assert got.shape == array.shape and got.dtype == expected.dtype and (got == expected).all(), name
            assert got.flags.writeable
        assert model.served[-1] == ("/v2/models/echo/infer", {"sequence_id": 7, "sequence_start": True,
                                                             "binary_data_output": True})
        answer = await infer(route, {"A": np.ones(2, np.int8), "B": np.zeros(2, np.int8)}, outputs=["OUT_B"],
                             version=3)
        assert list(answer) == ["OUT_B"] and model.served[-1][0] == "/v2/models/echo/versions/3/infer"
        assert len(server.connections) == 1
        route.close()
        await server.close(1)
    run(test)


def test_an_error_answer_raises_the_code_of_its_status_and_its_message():
    async def test():
        server, route = await listening(Model())
        missing = ListenerRoute(route.listener, "missing")
        with pytest.raises(InferenceError) as raised:
            await infer(missing, {"X": np.ones(1, np.float32)})
        assert raised.value.code == ErrorCode.NOT_FOUND and "'missing' is not found" in raised.value.message
        assert (await infer(route, {"X": np.ones(1, np.float32)}))["OUT_X"].tolist() == [1.0]  # still serving
        route.close()
        await server.close(1)
    run(test)


def test_calls_beyond_the_pool_wait_for_a_connection(monkeypatch):
    monkeypatch.setattr(listener_client, "POOL_SIZE", 2)

    async def test():
        model = Model(delay_s=0.05)
        server, route = await listening(model)
        answers = await asyncio.gather(*(infer(route, {"X": np.full(1, n, np.int32)}) for n in range(8)))
        assert [answer["OUT_X"].tolist() for answer in answers] == [[n] for n in range(8)]
        assert model.most_in_flight == 2 and len(server.connections) == 2
        route.close()
        await server.close(1)
    run(test)


def test_a_cancelled_call_closes_its_connection_and_the_server_drops_its_request():
    async def test():
        model = Model(delay_s=30)
        server, route = await listening(model)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(infer(route, {"X": np.ones(1, np.int32)}), 0.3)
        for _ in range(50):
            if model.cancelled:
                break
            await asyncio.sleep(0.05)
        assert model.cancelled == 1
        model.delay_s = 0
        assert (await infer(route, {"X": np.ones(1, np.int32)}))["OUT_X"].tolist() == [1]
        assert len(server.connections) == 1  # a new one: the cancelled call's is gone
        route.close()
        await server.close(1)
    run(test)


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def test():
        server, route = await listening(Model(), ServerLimits(idle_timeout_s=0.2))
        await infer(route, {"X": np.ones(1, np.int32)})
        await asyncio.sleep(0.6)
        assert not server.connections
        assert (await infer(route, {"X": np.ones(1, np.int32)}))["OUT_X"].tolist() == [1]
        route.close()
        await server.close(1)
    run(test)


def test_a_connection_lost_mid_answer_is_unavailable():
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.read(100)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    async def test():
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        route = ListenerRoute(Listener("127.0.0.1", server.sockets[0].getsockname()[1], 1 << 20), "echo")
        with pytest.raises(InferenceError) as raised:
            await infer(route, {"X": np.ones(1, np.int32)})
        assert raised.value.code == ErrorCode.UNAVAILABLE and "closed before it answered" in raised.value.message
        server.close()
    run(test)


def test_a_refused_listener_leaves_requests_to_the_handle_for_a_while(monkeypatch):
    async def test():
        route = ListenerRoute(Listener("127.0.0.1", free_port(), 1 << 20), "echo")
        inputs = {"X": np.ones(1, np.int32)}
        with pytest.raises(ListenerRefused):
            await infer(route, inputs)
        assert route.request(inputs, None, None, None) is None  # the handle's, until RETRY_AFTER_S pass
        route.refused_until = 0.0
        assert route.request(inputs, None, None, None) is not None
        big = {"X": np.ones(1 << 18, np.float32)}  # 1 MB of data over a 1 MB limit, with its header
        assert route.request(big, None, None, None) is None
    run(test)


def test_the_probe_tells_the_applications_listener_from_another_server():
    async def test():
        server, route = await listening(Model())
        assert await probe(route.listener, SERVER_NAME)
        assert not await probe(route.listener, "another-server")
        assert not await probe(Listener("127.0.0.1", free_port(), 1 << 20), SERVER_NAME)
        await server.close(1)
    run(test)
