"""What a route of the Ingress reads and answers: a request's method, path, headers and its body as it
arrives (``HttpRequest``, ``Body``), and the ``Reply``. The replica's own HTTP listener (``http_server``)
makes them from the bytes on a connection; Serve's proxy path hands the routes a Starlette request that
reads the same way (``ingress.ProxiedRequest``)."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

#: Bytes of a body that may wait for its route before the connection stops reading (and again below half).
BODY_HIGH_WATER = 1 << 20


class Reading(Protocol):
    """What a body needs of its connection: to stop and resume reading, and to tell the client to send."""

    def hold_reading(self, holder: object) -> None: ...

    def release_reading(self, holder: object) -> None: ...

    def send_continue(self) -> None: ...


class Headers(dict):
    """A request's headers under lower-case names; ``get`` takes any case (the last of repeated names wins)."""

    __slots__ = ()

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)


@dataclass(slots=True)
class Reply:
    """A route's answer: status, body or streamed ``events``, content type and further headers."""

    status: int = 200
    body: bytes | memoryview = b""
    media_type: str | None = None
    headers: dict[str, str] | None = None
    #: A body sent in chunks as it is produced (server-sent events), instead of ``body``.
    events: AsyncIterator[bytes] | None = None


def error_reply(status: int, message: str) -> Reply:
    return Reply(status, json.dumps({"error": message}, separators=(",", ":")).encode(), "application/json")


class ClientDisconnected(Exception):
    """The client closed the connection before its request's body had arrived."""


class Body:
    """A request's body as it arrives: the parser hands over chunks, the route reads them."""

    __slots__ = ("_connection", "_chunks", "_buffered", "_waiter", "_continue", "complete", "failed")

    def __init__(self, connection: Reading, expect_continue: bool):
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future | None = None
        self._continue = expect_continue
        self.complete = False
        self.failed = False

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > BODY_HIGH_WATER:
            self._connection.hold_reading(self)
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self) -> None:
        self.failed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def arrived(self) -> list[bytes] | None:
        """The whole body, taken, when all of it has arrived (the common case of a small request): read
        without waiting; None while some is on its way (``stream`` then)."""
        if not self.complete or self._continue:
            return None
        chunks = list(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        self._connection.release_reading(self)
        return chunks

    async def stream(self) -> AsyncIterator[bytes]:
        if self._continue:  # the client waits for this before it sends the body (curl does past 1 MB)
            self._continue = False
            self._connection.send_continue()
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < BODY_HIGH_WATER // 2:
                    self._connection.release_reading(self)
                yield chunk
            elif self.complete:
                return
            elif self.failed:
                raise ClientDisconnected("the client closed the connection before the request body arrived")
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
                self._waiter = None


@dataclass(slots=True)
class HttpRequest:
    """What a route reads of a request: method, path (percent-decoded), headers, and the body as it comes."""

    method: str
    path: str
    headers: Headers
    body: Body
    keep_alive: bool

    def stream(self) -> AsyncIterator[bytes]:
        return self.body.stream()
