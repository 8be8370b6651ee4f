"""The Ingress replica's own HTTP/1.1 listener: bytes from the socket to the routes in this process.

Every ingress replica on a node listens on the same port (``SO_REUSEPORT``) and the kernel spreads the
connections among them: no proxy in between, no Serve HTTP stack, no handle hop to the Ingress. httptools
(the parser uvicorn uses) reads the requests; this module keeps what a front proxy did: a bound on the time
a request's headers take (408) and on idle keep-alive connections (closed), on the connections one client
address holds (429), a Content-Length of 19 digits or more refused (413), and a malformed request answered
400 before the connection closes. A request's body reaches the route as it arrives (``HttpRequest.stream``),
so the route's limits (size, time, the in-flight budget) apply to what has arrived, and reading pauses while
a route has not taken what came. Requests pipelined on one connection are answered in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

import httptools

from cluster.protocol.http_messages import Body, Headers, HttpRequest, Reply, error_reply

logger = logging.getLogger(__name__)

#: Requests pipelined on one connection that may wait their turn before it stops reading.
PIPELINE_DEPTH = 16
#: Requests parsed ahead of the one being answered past which the connection is refused (one read of a few
#: hundred kilobytes can hold thousands of tiny requests).
MAX_PIPELINED = 4 * PIPELINE_DEPTH
#: A Content-Length this many digits long or longer (1e18 bytes) is refused before anything is read.
HUGE_LENGTH_DIGITS = 19
#: Replies up to this size go out in one write with their head.
ONE_WRITE_BYTES = 64 << 10
#: What holds reading paused while the pipeline is too deep.
_DEEP_PIPELINE = object()


@dataclass(frozen=True)
class ServerLimits:
    """What the listener bounds before a route sees the request."""

    #: Seconds from a request's first byte until its headers are complete (408 past it).
    header_timeout_s: float = 10.0
    #: Seconds a keep-alive connection may wait for its next request before it is closed.
    idle_timeout_s: float = 60.0
    #: Connections one client address may hold open at once, per listener (0: no bound).
    max_client_connections: int = 256


Respond = Callable[[HttpRequest], Awaitable[Reply]]

_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


def _head(status: int, media_type: str | None, headers: dict[str, str] | None, length: int | None,
          close: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_PHRASES.get(status, '')}"]
    if media_type:
        lines.append(f"content-type: {media_type}")
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests, answers each in order, keeps it alive or closes it."""

    def __init__(self, server: HttpServer):
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.parser = httptools.HttpRequestParser(self)
        self.pipeline: collections.deque[HttpRequest] = collections.deque()
        self.receiving: HttpRequest | None = None
        self.current: asyncio.Task | None = None
        self.closing = False
        self.timer: asyncio.TimerHandle | None = None
        self.holders: set[object] = set()  # what keeps reading paused (a full body, a deep pipeline)
        self.drained: asyncio.Future | None = None  # set while the transport's write buffer is full
        self.refusal: Reply | None = None  # an error to answer once the request being served is answered
        self._url = b""
        self._headers = Headers()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""
        if not self.server.admit(self):
            limit = self.server.limits.max_client_connections
            self._refuse(429, f"more than {limit} connections from this address")
            return
        self._wait(self.server.limits.idle_timeout_s, self._idle)

    def data_received(self, data: bytes) -> None:
        """Parse what arrived; requests whose headers it completed start only once all of it parsed, so that
        a request the parser refuses after its headers (a bad Transfer-Encoding) never runs."""
        if self.closing or self.refusal is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            # Requests parsed whole before the error are answered first; the one it broke off never runs.
            for request in [r for r in self.pipeline if not r.body.complete]:
                request.body.fail()
                self.pipeline.remove(request)
            self.receiving = None
            if isinstance(exc, httptools.HttpParserUpgrade) or self.parser.should_upgrade():
                self._refuse(400, "protocol upgrades are not supported; send HTTP/1.1 (gRPC has a port of its own)")
            elif "Content-Length overflow" in str(exc):  # llhttp's words for a length past 2^64
                self._refuse(413, "request body length is too large")
            else:
                self._refuse(400, f"malformed HTTP request: {exc}")
        if self.current is None and self.pipeline and not self.closing:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._stop_timer()
        self.server.release(self)
        for request in (self.receiving, *self.pipeline):
            if request is not None:
                request.body.fail()
        if self.current is not None:
            self.current.cancel()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.drained = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)
        self.drained = None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url, self._headers = b"", Headers()
        if self.current is None:
            self._wait(self.server.limits.header_timeout_s, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.decode("latin-1").lower()
        if name == "content-length" and len(value.strip()) >= HUGE_LENGTH_DIGITS:
            self._refuse(413, "request body length is too large")
            raise httptools.HttpParserCallbackError("refused")
        self._headers[name] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.parser.should_upgrade():
            raise httptools.HttpParserUpgrade("upgrade")
        if len(self.pipeline) >= MAX_PIPELINED:
            self._refuse(400, f"more than {MAX_PIPELINED} requests pipelined ahead of their answers")
            raise httptools.HttpParserCallbackError("refused")
        if self.current is None:
            self._stop_timer()
        headers = self._headers
        path = httptools.parse_url(self._url).path.decode("latin-1")
        request = HttpRequest(self.parser.get_method().decode("ascii"), unquote(path), headers,
                              Body(self, headers.get("expect", "").lower() == "100-continue"),
                              self.parser.should_keep_alive())
        self.receiving = request
        self.pipeline.append(request)
        if len(self.pipeline) > PIPELINE_DEPTH:
            self.hold_reading(_DEEP_PIPELINE)

    def on_body(self, body: bytes) -> None:
        if self.receiving is not None:
            self.receiving.body.feed(body)

    def on_message_complete(self) -> None:
        if self.receiving is not None:
            self.receiving.body.finish()
            self.receiving = None

    # reading and writing

    def hold_reading(self, holder: object) -> None:
        if not self.holders and not self.closing:
            self.transport.pause_reading()
        self.holders.add(holder)

    def release_reading(self, holder: object) -> None:
        if holder in self.holders:
            self.holders.discard(holder)
            if not self.holders and not self.closing:
                self.transport.resume_reading()

    def send_continue(self) -> None:
        if not self.closing:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _next(self) -> None:
        request = self.pipeline.popleft()
        if len(self.pipeline) <= PIPELINE_DEPTH:
            self.release_reading(_DEEP_PIPELINE)
        self.current = self.loop.create_task(self._serve(request))

    async def _serve(self, request: HttpRequest) -> None:
        try:
            reply = await self.server.respond(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the routes answer their own errors; this is a last resort
            logger.warning("HTTP %s %s failed: %r", request.method, request.path, exc)
            reply = error_reply(500, "internal error")
        # A body the route did not wait for may still be on its way: closing is the only safe end then.
        close = not request.keep_alive or not request.body.complete or self.closing
        try:
            await self._write(reply, close, head_only=request.method == "HEAD")
        except Exception as exc:  # a streamed reply that failed midway: the client cannot tell, so cut it
            logger.warning("HTTP %s %s: the reply failed while being sent: %r", request.method, request.path, exc)
            self._abort()
            return
        self.current = None
        if close or self.closing:
            self._close()
        elif self.pipeline:  # before a refusal: answers go in the order of the requests
            self._next()
        elif self.refusal is not None:
            self._write_refusal()
        else:
            self._wait(self.server.limits.idle_timeout_s, self._idle)

    async def _write(self, reply: Reply, close: bool, head_only: bool = False) -> None:
        if self.closing:
            return
        if reply.events is None:
            body = reply.body
            size = body.nbytes if isinstance(body, memoryview) else len(body)
            head = _head(reply.status, reply.media_type, reply.headers, size, close)
            if head_only:
                self.transport.write(head)
            elif size <= ONE_WRITE_BYTES:  # one send: a copy of a small body costs less than a system call
                self.transport.write(head + body)
            else:
                self.transport.write(head)
                self.transport.write(body)
            await self._drained()
            return
        async with contextlib.aclosing(reply.events) as events:
            self.transport.write(_head(reply.status, reply.media_type, reply.headers, None, close))
            async for chunk in events:
                if self.closing:
                    return
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                await self._drained()
            if not self.closing:
                self.transport.write(b"0\r\n\r\n")

    async def _drained(self) -> None:
        """Wait while the client's socket is full; a client that reads nothing for the idle timeout is cut
        off (it would hold its reply, and the requests behind it, for as long as it liked)."""
        if self.drained is None or self.closing:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.drained), self.server.limits.idle_timeout_s)
        except asyncio.TimeoutError:
            self._abort()

    # timers and ends

    def _wait(self, seconds: float, then: Callable[[], None]) -> None:
        self._stop_timer()
        self.timer = self.loop.call_later(seconds, then)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _idle(self) -> None:
        if self.current is None and self.receiving is None and not self.pipeline:
            self._close()

    def _header_timeout(self) -> None:
        if self.current is None:
            self._refuse(408, f"the request headers did not arrive within {self.server.limits.header_timeout_s:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer an error the connection cannot go on after, and close it: at once, or, while a request is
        being answered, right after its answer (answers go in the order of the requests)."""
        if self.closing or self.refusal is not None:
            return
        self.refusal = error_reply(status, message)
        self.transport.pause_reading()
        if self.current is None and not self.pipeline:
            self._write_refusal()

    def _write_refusal(self) -> None:
        if not self.closing:
            reply = self.refusal
            self.transport.write(_head(reply.status, reply.media_type, None, len(reply.body), True) + reply.body)
            self._close()

    def _close(self) -> None:
        if not self.closing:
            self.closing = True
            self._stop_timer()
            self.transport.close()

    def _abort(self) -> None:
        """Drop the connection without waiting for what is left to send."""
        self.closing = True
        self._stop_timer()
        self.transport.abort()

    def close_if_idle(self) -> None:
        if self.current is None and self.receiving is None:
            self._close()


class HttpServer:
    """The listener: accepts connections on ``host:port`` beside the node's other ingress replicas and hands
    each request to ``respond``."""

    def __init__(self, respond: Respond, limits: ServerLimits = ServerLimits()):
        self.respond = respond
        self.limits = limits
        self.connections: set[HttpConnection] = set()
        self.by_client: collections.Counter[str] = collections.Counter()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpConnection(self), host, port, reuse_port=True,
                                                backlog=2048)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    def admit(self, connection: HttpConnection) -> bool:
        self.connections.add(connection)
        self.by_client[connection.client] += 1
        limit = self.limits.max_client_connections
        return not limit or self.by_client[connection.client] <= limit

    def release(self, connection: HttpConnection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.by_client[connection.client] -= 1
            if self.by_client[connection.client] <= 0:
                del self.by_client[connection.client]

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting (the node's other replicas take new connections), close idle connections, give
        requests in flight ``grace_s`` to finish, then close the rest."""
        if self._server is None:
            return
        self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        running = [c.current for c in self.connections if c.current is not None]
        if running:
            await asyncio.wait(running, timeout=grace_s)
        for connection in list(self.connections):
            connection._close()
