"""The ingress's own gRPC listener keeps its bounds, on a real grpc.aio server read at the HTTP/2 frame level:
it advertises how many RPCs a connection may carry at once, closes a connection that never sends its
preface within the header timeout, and sends GOAWAY to one with no RPC for the idle timeout."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from cluster.protocol.grpc_server import STREAMS_PER_CONNECTION, start_grpc_server
from cluster.protocol.http_server import ServerLimits
from tests.integration.conftest import free_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS, GOAWAY = 0x4, 0x7
MAX_CONCURRENT_STREAMS = 0x3


class Refusing:
    """A servicer whose every RPC is refused (these tests send none)."""

    def __getattr__(self, name):
        async def method(request, context):
            raise NotImplementedError(name)
        return method


def frames(sock: socket.socket, until_s: float):
    """(type, flags, payload) of each HTTP/2 frame the server sends, until it closes or ``until_s`` pass."""
    buffer, deadline = b"", time.monotonic() + until_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            break
        if not data:
            yield "closed", 0, b""
            return
        buffer += data
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            length = int.from_bytes(buffer[:3], "big")
            yield buffer[3], buffer[4], buffer[9:9 + length]
            buffer = buffer[9 + length:]


@pytest.fixture
def listener():
    """A gRPC listener with a 1 s header timeout and a 2 s idle timeout, on a loop of its own thread."""
    import threading

    loop, port = asyncio.new_event_loop(), free_port()
    limits = ServerLimits(header_timeout_s=1.0, idle_timeout_s=2.0)
    server = loop.run_until_complete(start_grpc_server(Refusing(), "127.0.0.1", port, 1 << 20, limits))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield port
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_the_listener_advertises_how_many_rpcs_a_connection_may_carry(listener):
    with socket.create_connection(("127.0.0.1", listener)) as sock:
        sock.sendall(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # the preface and empty SETTINGS
        settings = next(payload for kind, flags, payload in frames(sock, 5) if kind == SETTINGS and not flags & 1)
    advertised = dict(struct.unpack(">HI", settings[i:i + 6]) for i in range(0, len(settings), 6))
    assert advertised[MAX_CONCURRENT_STREAMS] == STREAMS_PER_CONNECTION


def test_a_connection_that_sends_no_preface_is_closed_after_the_header_timeout(listener):
    with socket.create_connection(("127.0.0.1", listener)) as sock:
        started = time.monotonic()
        seen = [kind for kind, _, _ in frames(sock, 10)]
    assert seen[-1:] == ["closed"] and time.monotonic() - started < 8, seen


def test_a_connection_with_no_rpc_for_the_idle_timeout_is_sent_goaway(listener):
    with socket.create_connection(("127.0.0.1", listener)) as sock:
        sock.sendall(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        started = time.monotonic()
        seen = []
        for kind, _, _ in frames(sock, 15):
            seen.append(kind)
            if kind == GOAWAY:
                break
    assert GOAWAY in seen and 1.5 < time.monotonic() - started < 12, seen
