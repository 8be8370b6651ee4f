"""The ingress replica's own HTTP/1.1 listener, over real sockets: requests in order on a connection, bodies
as they arrive (Expect: 100-continue, chunked), what it refuses before a route sees the request (malformed,
huge lengths, slow headers, too many connections from one address), keep-alive and its end, streamed replies,
and a client that leaves mid-request."""

from __future__ import annotations

import asyncio
import json

import pytest

from cluster.protocol.http_messages import HttpRequest, Reply
from cluster.protocol.http_server import HttpServer, ServerLimits


async def echo(request: HttpRequest) -> Reply:
    """Reads the whole body unless told not to; answers what it saw."""
    if request.path == "/refuse":
        return Reply(413, b'{"error":"too large"}', "application/json")
    if request.path == "/events":
        async def events():
            for n in range(3):
                yield f"data: {n}\n\n".encode()
        return Reply(200, media_type="text/event-stream", events=events())
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    seen = {"method": request.method, "path": request.path, "size": size, "x": request.headers.get("X-Thing")}
    return Reply(200, json.dumps(seen).encode(), "application/json")


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response: status, headers, body (by Content-Length, or chunked)."""
        status_line = await asyncio.wait_for(self.reader.readline(), 5)
        assert status_line, "the connection closed without an answer"
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, headers, await self.reader.readexactly(int(headers["content-length"]))
        body = b""
        while (size := int((await self.reader.readline()).strip(), 16)) > 0:
            body += await self.reader.readexactly(size)
            await self.reader.readline()
        await self.reader.readline()
        return status, headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 5) == b""


async def serving(limits: ServerLimits = ServerLimits(), respond=echo) -> HttpServer:
    server = HttpServer(respond, limits)
    await server.start("127.0.0.1", 0)
    return server


async def connect(server: HttpServer) -> Client:
    return Client(*await asyncio.open_connection("127.0.0.1", server.port))


def run(test):
    return asyncio.run(asyncio.wait_for(test(), 20))


def test_requests_pipelined_on_one_connection_are_answered_in_order_and_it_stays_open():
    async def test():
        server = await serving()
        client = await connect(server)
        await client.send(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\nX-Thing: one\r\n\r\nabc"
                          b"GET /b%20c HTTP/1.1\r\nx-thing: two\r\n\r\n")
        first, second = await client.response(), await client.response()
        assert first[0] == 200 and json.loads(first[2]) == {"method": "POST", "path": "/a", "size": 3, "x": "one"}
        assert json.loads(second[2]) == {"method": "GET", "path": "/b c", "size": 0, "x": "two"}
        assert "connection" not in second[1]
        await client.send(b"GET /c HTTP/1.1\r\n\r\n")
        assert json.loads((await client.response())[2])["path"] == "/c"
        await server.close()
    run(test)


def test_a_body_waits_for_100_continue_and_a_chunked_body_is_read_whole():
    async def test():
        server = await serving()
        client = await connect(server)
        await client.send(b"POST /upload HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(client.reader.readline(), 5) == b"HTTP/1.1 100 Continue\r\n"
        assert await client.reader.readline() == b"\r\n"
        await client.send(b"hello")
        assert json.loads((await client.response())[2])["size"] == 5
        await client.send(b"POST /chunks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        assert json.loads((await client.response())[2])["size"] == 7
        await server.close()
    run(test)


def test_a_reply_before_the_body_arrived_closes_the_connection():
    """A route that answers without reading the body (a 413 by its declared length): the rest of the body
    may still come, so the connection cannot be read on."""
    async def test():
        server = await serving()
        client = await connect(server)
        await client.send(b"POST /refuse HTTP/1.1\r\nContent-Length: 1000000\r\n\r\npartial")
        status, headers, _ = await client.response()
        assert (status, headers["connection"]) == (413, "close")
        assert await client.closed()
        await server.close()
    run(test)


@pytest.mark.parametrize("request_bytes, status, error", [
    (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
    (b"POST /a HTTP/1.1\r\nContent-Length: 1000000000000000000\r\n\r\n", 413, "request body length is too large"),
    (b"POST /a HTTP/1.1\r\nContent-Length: 18446744073709551617\r\n\r\n", 413, "request body length is too large"),
    (b"GET /a HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", 400, "protocol upgrades are not supported"),
])
def test_what_is_refused_before_any_route_answers_json_and_closes(request_bytes, status, error):
    async def test():
        server = await serving()
        client = await connect(server)
        await client.send(request_bytes)
        answer = await client.response()
        assert answer[0] == status and error in json.loads(answer[2])["error"]
        assert await client.closed()
        await server.close()
    run(test)


def test_a_refusal_after_a_request_being_answered_comes_after_its_answer():
    """Answers go in the order of the requests: a malformed request pipelined behind a slow one is refused
    once the slow one is answered, and an upgrade (which the parser completes before refusing) never runs."""
    async def test():
        ran = []

        async def slow(request: HttpRequest) -> Reply:
            ran.append(request.path)
            await asyncio.sleep(0.2)
            return Reply(200, b"done")

        server = await serving(respond=slow)
        client = await connect(server)
        await client.send(b"GET /slow HTTP/1.1\r\n\r\nGARBAGE\r\n\r\n")
        assert (await client.response())[:3:2] == (200, b"done")
        assert (await client.response())[0] == 400
        assert await client.closed()
        upgrade = await connect(server)
        await upgrade.send(b"POST /unload HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n")
        assert (await upgrade.response())[0] == 400
        assert ran == ["/slow"]
        await server.close()
    run(test)


def test_head_answers_without_a_body_and_too_deep_a_pipeline_is_refused():
    async def test():
        server = await serving()
        client = await connect(server)
        await client.send(b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        line = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        assert line.startswith(b"HTTP/1.1 200") and b"content-length: " in line
        assert json.loads((await client.response())[2])["path"] == "/b"  # next, not the HEAD's body
        flood = await connect(server)
        await flood.send(b"GET /a HTTP/1.1\r\n\r\n" * 1000)
        answers = []
        while not answers or answers[-1] == 200:
            answers.append((await flood.response())[0])
        assert answers[-1] == 400 and len(answers) <= 70
        assert await flood.closed()
        await server.close()
    run(test)


def test_headers_that_trickle_past_the_header_timeout_answer_408_and_an_idle_connection_is_closed():
    async def test():
        server = await serving(ServerLimits(header_timeout_s=0.3, idle_timeout_s=0.3))
        slow = await connect(server)
        await slow.send(b"GET /a HTTP/1.1\r\nX-Thing: ")
        for _ in range(2):  # still sending within the timeout, never finishing
            await asyncio.sleep(0.1)
            await slow.send(b"x")
        status, _, body = await slow.response()
        assert status == 408 and "did not arrive within 0.3 s" in json.loads(body)["error"]
        idle = await connect(server)
        await idle.send(b"GET /a HTTP/1.1\r\n\r\n")
        assert (await idle.response())[0] == 200
        assert await idle.closed()  # after idle_timeout_s with no next request
        await server.close()
    run(test)


def test_connections_past_the_bound_for_one_address_answer_429_and_free_slots_are_reused():
    async def test():
        server = await serving(ServerLimits(max_client_connections=2))
        held = [await connect(server), await connect(server)]
        extra = await connect(server)
        status, _, body = await extra.response()
        assert status == 429 and "more than 2 connections" in json.loads(body)["error"]
        held[0].writer.close()
        await held[0].closed()
        await asyncio.sleep(0.1)
        again = await connect(server)
        await again.send(b"GET /a HTTP/1.1\r\n\r\n")
        assert (await again.response())[0] == 200
        await server.close()
    run(test)


def test_a_streamed_reply_is_sent_chunked_and_the_connection_stays_open():
    async def test():
        server = await serving()
        client = await connect(server)
        await client.send(b"GET /events HTTP/1.1\r\n\r\n")
        status, headers, body = await client.response()
        assert (status, headers["transfer-encoding"]) == (200, "chunked")
        assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
        await client.send(b"GET /a HTTP/1.1\r\n\r\n")
        assert (await client.response())[0] == 200
        await server.close()
    run(test)


def test_a_client_that_leaves_mid_request_cancels_its_route():
    async def test():
        cancelled = asyncio.Event()

        async def waits(request: HttpRequest) -> Reply:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return Reply()

        server = await serving(respond=waits)
        client = await connect(server)
        await client.send(b"GET /slow HTTP/1.1\r\n\r\n")
        await asyncio.sleep(0.1)
        client.writer.close()
        await asyncio.wait_for(cancelled.wait(), 5)
        assert not server.connections
        await server.close()
    run(test)


def test_two_listeners_share_one_port():
    """Every ingress replica on a node listens on the advertised port (SO_REUSEPORT)."""
    async def test():
        first = await serving()
        second = HttpServer(echo)
        await second.start("127.0.0.1", first.port)
        assert second.port == first.port
        await first.close()
        client = await connect(second)  # the one left answers
        await client.send(b"GET /a HTTP/1.1\r\n\r\n")
        assert (await client.response())[0] == 200
        await second.close()
    run(test)
