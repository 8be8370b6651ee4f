"""cluster.client's way to a model through the ingress listener, against the real listener (HttpServer) and
the real binary codec: tensors of every kind round trip on one pooled connection (response parameters
too), what the protocol cannot carry as a handle does is left to the handle, an error answer keeps its
code and message, calls beyond the pool wait for a connection (also when a waiter gives up as it is
handed a place), a cancelled call closes its connection (the server drops the request), a connection the
server closed while idle is not reused (also when the caller's loop did not run meanwhile), one lost
mid-answer or an answer that is not the protocol's is UNAVAILABLE, a listener that refuses (no socket, too
many connections) leaves the requests to the handle for a while and is checked again, and the probe tells
the application's listener from another server."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from cluster import listener_client
from cluster.listener_client import Listener, ListenerRefused, ListenerRoute, probe
from cluster.protocol.codec import HEADER_LENGTH, decode_infer_request, encode_infer_response
from cluster.protocol.http_messages import HttpRequest, Reply, error_reply
from cluster.protocol.http_server import HttpServer, ServerLimits
from deployments.backends import Outputs
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
        if "echo_parameters" in decoded.parameters:
            outputs = Outputs(outputs, {"echoed": decoded.parameters["echo_parameters"]})
        body, header_length = encode_infer_response("echo", 1, outputs, decoded)
        return Reply(200, body, "application/octet-stream",
                     {HEADER_LENGTH: str(header_length)} if header_length is not None else None)


def listener(port: int, idle_timeout_s: float = 60.0) -> Listener:
    return Listener("0.0.0.0", port, max_request_bytes=1 << 20, server_name=SERVER_NAME, idle_timeout_s=idle_timeout_s)


async def listening(model: Model, limits: ServerLimits = ServerLimits()) -> tuple[HttpServer, ListenerRoute]:
    server = HttpServer(model, limits)
    await server.start("127.0.0.1", 0)
    return server, ListenerRoute(listener(server.port, limits.idle_timeout_s))


async def infer(route: ListenerRoute, inputs, outputs=None, version=None, parameters=None, model="echo"):
    return await route.send(route.request(model, inputs, outputs, version, parameters))


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
        answer = await infer(route, {"A": np.ones(1, np.int8)}, parameters={"echo_parameters": "yes"})
        assert isinstance(answer, Outputs) and answer.parameters == {"echoed": "yes"}
        assert len(server.connections) == 1
        route.close()
        await server.close(1)
    run(test)


def test_an_error_answer_raises_the_code_of_its_status_and_its_message():
    async def test():
        server, route = await listening(Model())
        with pytest.raises(InferenceError) as raised:
            await infer(route, {"X": np.ones(1, np.float32)}, model="missing")
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


def unavailable_from(answer: bytes) -> str:
    """The UNAVAILABLE message a call gets from a server that writes ``answer`` and hangs up."""
    async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.read(1000)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def test():
        server = await asyncio.start_server(rogue, "127.0.0.1", 0)
        route = ListenerRoute(listener(server.sockets[0].getsockname()[1]))
        try:
            with pytest.raises(InferenceError) as raised:
                await infer(route, {"X": np.ones(1, np.int32)})
        finally:
            server.close()
        assert raised.value.code == ErrorCode.UNAVAILABLE, raised.value
        return raised.value.message
    return run(test)


def test_a_connection_lost_mid_answer_is_unavailable():
    assert "closed before it answered" in unavailable_from(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")


@pytest.mark.parametrize("body", [
    b"<html>not the protocol</html>", b"[1, 2]", b'{"outputs": [{"name": "Y"}]}',
    b'{"outputs": [{"name": "Y", "datatype": "INT32", "shape": [4], "parameters": {"binary_data_size": 16}}]}'])
def test_an_answer_that_is_not_the_protocols_is_unavailable(body):
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert "answer did not parse" in unavailable_from(answer)


def test_what_the_protocol_cannot_carry_as_the_handle_does_is_left_to_the_handle():
    route = ListenerRoute(listener(free_port()))
    x = {"X": np.ones(1, np.int32)}
    assert route.request("echo", x, None, None, None) is not None
    for inputs, parameters in [({"X": np.array([3, 5], dtype=object)}, None),  # objects that are not bytes
                               ({"X": np.ones(2, ">f4")}, None),  # not the machine's byte order
                               ({"X": np.ones(2, np.complex64)}, None),  # no v2 datatype
                               (x, {"threshold": float("nan")}), (x, {"mask": np.ones(2)}), (x, {"raw": b"\x00"}),
                               ({"X": np.ones(1 << 18, np.float32)}, None)]:  # 1 MB of data, over 1 MB with its header
        assert route.request("echo", inputs, None, None, parameters) is None


def test_a_refused_listener_leaves_requests_to_the_handle_for_a_while_and_is_checked_again():
    async def test():
        port = free_port()
        route = ListenerRoute(listener(port))
        inputs = {"X": np.ones(1, np.int32)}
        with pytest.raises(ListenerRefused):
            await infer(route, inputs)
        assert route.request("echo", inputs, None, None, None) is None  # the handle's, until RETRY_AFTER_S pass
        route.refused_until = 0.0
        other = HttpServer(Model(), ServerLimits())  # another server on the port, by another name
        await other.start("127.0.0.1", port)
        with pytest.raises(ListenerRefused, match="no triton-other"):
            route.listener = Listener("127.0.0.1", port, 1 << 20, "triton-other")
            await infer(route, inputs)
        route.refused_until, route.listener = 0.0, listener(port)
        assert (await infer(route, inputs))["OUT_X"].tolist() == [1]  # checked, then served
        assert not route.check_first
        route.close()
        await other.close(1)
    run(test)


def test_too_many_connections_from_this_address_leave_the_request_to_the_handle(monkeypatch):
    async def test():
        server, route = await listening(Model(delay_s=0.2), ServerLimits(max_client_connections=1))
        results = await asyncio.gather(infer(route, {"X": np.ones(1, np.int32)}),
                                       infer(route, {"X": np.ones(1, np.int32)}), return_exceptions=True)
        assert sorted(type(result).__name__ for result in results) == ["ListenerRefused", "dict"]
        assert time.monotonic() < route.refused_until
        route.close()
        await server.close(1)
    run(test)


def test_a_waiter_that_gives_up_as_it_is_handed_a_place_passes_it_on(monkeypatch):
    monkeypatch.setattr(listener_client, "POOL_SIZE", 1)

    async def test():
        model = Model(delay_s=30)
        server, route = await listening(model)
        first = asyncio.ensure_future(infer(route, {"X": np.ones(1, np.int32)}))
        await asyncio.sleep(0.2)
        model.delay_s = 0
        second = asyncio.ensure_future(infer(route, {"X": np.full(1, 2, np.int32)}))
        third = asyncio.ensure_future(infer(route, {"X": np.full(1, 3, np.int32)}))
        await asyncio.sleep(0.1)
        first.cancel()  # its connection closes: the second waiter is handed a place to open one ...
        await asyncio.sleep(0)
        second.cancel()  # ... and gives up before it runs: the place goes to the third
        assert (await asyncio.wait_for(third, 5))["OUT_X"].tolist() == [3]
        assert route.pools[asyncio.get_running_loop()].opened == 1
        route.close()
        await server.close(1)
    run(test)


def test_a_connection_closed_while_the_callers_loop_did_not_run_is_not_reused():
    ready, stop = threading.Event(), threading.Event()
    ports = []

    def serve():
        async def main():
            server = HttpServer(Model(), ServerLimits(idle_timeout_s=0.3))
            await server.start("127.0.0.1", 0)
            ports.append(server.port)
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await server.close(1)
        asyncio.run(main())

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(10)
        route = ListenerRoute(listener(ports[0], idle_timeout_s=60))  # told a long idle time: the peek decides
        loop = asyncio.new_event_loop()
        for n in range(3):
            answer = loop.run_until_complete(asyncio.wait_for(infer(route, {"X": np.full(1, n, np.int32)}), 10))
            assert answer["OUT_X"].tolist() == [n]
            time.sleep(0.6)  # the server closes the idle connection; this loop does not run to see it
        loop.close()
    finally:
        stop.set()
        thread.join(10)


def test_the_probe_tells_the_applications_listener_from_another_server():
    async def test():
        server, route = await listening(Model())
        assert await probe(route.listener)
        assert not await probe(Listener("127.0.0.1", server.port, 1 << 20, "another-server"))
        assert not await probe(listener(free_port()))
        await server.close(1)
    run(test)
