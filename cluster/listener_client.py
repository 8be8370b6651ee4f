"""``cluster.client``'s short way to a model: the node's ingress listener, as an HTTP client would reach it.

A Serve handle call from another Ray job crosses the caller's router thread, Ray's actor call and the model
deployment's replica: ~2.5 ms at one call in flight and ~700 calls/s at 16 here, where the same model
answers the ingress replica's own HTTP listener at ~1,200 and ~5,000 req/s (docs/benchmarks.md). Where an
ingress replica listens on the caller's node, the client posts KServe v2 requests with the binary tensor
extension there instead, on keep-alive connections of its own (httptools parses the answers): the request
then takes the data plane's path, with its limits, its in-process models and their batching.

Only what the listener carries exactly goes this way (``ListenerRoute.request``): tensors of v2 datatypes
(object arrays of bytes or str only), JSON parameters, requests no larger than its ``max_request_bytes``.
The client falls back to the Serve handle for the rest, for streams, and while the listener refuses
connections (a replica restarting; the first connection after a refusal checks the server again). A
connection lost after its request went out is an error (the request may have run); one the server closed
while idle is never reused.
"""

from __future__ import annotations

import asyncio
import json
import select
import time
from dataclasses import dataclass, field
from typing import Any

import httptools
import numpy as np

from cluster.protocol.raw_tensors import decode_raw, encode_raw
from deployments.backends import Outputs
from deployments.config.dtypes import v2_datatype
from deployments.errors import HTTP_STATUS, ErrorCode, InferenceError

#: Connections one pool (one event loop's calls to one listener) keeps at most; calls beyond wait for one.
#: Every local client shares the listener's bound of connections per address (ServerLimits, 256).
POOL_SIZE = 32
#: Seconds the client leaves a listener alone after it refused a connection.
RETRY_AFTER_S = 5.0
#: Seconds a connection attempt may take before the listener counts as refusing.
CONNECT_TIMEOUT_S = 5.0
#: The error code of each HTTP status the routes answer (the first code of each, as the codes map).
_CODE_OF_STATUS = {status: code for code, status in reversed(list(HTTP_STATUS.items()))}
#: The listener's answer to a connection over its bound per client address, before it read any request.
_TOO_MANY_CONNECTIONS = 429


@dataclass(frozen=True)
class Listener:
    """What an ingress replica tells clients about its HTTP listener (``Ingress.listener``)."""

    host: str
    port: int
    max_request_bytes: int
    server_name: str
    #: Seconds the listener keeps an idle keep-alive connection (the client gives one up a second before).
    idle_timeout_s: float = 60.0

    @property
    def address(self) -> str:
        """The address to connect to on this node (a wildcard bind listens on loopback too)."""
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)


class ListenerRefused(ConnectionError):
    """No connection to the listener, or one it refused before reading: nothing ran, the handle may take it."""


async def probe(listener: Listener, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether the application's ingress listens at ``listener``'s address from here (``GET /v2`` gives its
    name: another server on that port on this node is no way to the models)."""
    try:
        _, connection = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
            _Connection, listener.address, listener.port), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        status, _, body = await asyncio.wait_for(connection.send(
            [f"GET /v2 HTTP/1.1\r\nHost: {listener.address}\r\n\r\n".encode()]), timeout_s)
        return status == 200 and json.loads(body).get("name") == listener.server_name
    except (ConnectionError, asyncio.TimeoutError, ValueError, AttributeError):
        return False
    finally:
        connection.close()


def encode_request(inputs: dict[str, Any], outputs: list[str] | None, parameters: dict | None
                   ) -> tuple[bytes, list]:
    """The binary extension's JSON header and the raw tensors after it (every output asked for in binary).
    Raises ValueError or TypeError for what the protocol cannot carry as the handle would."""
    described, raws = [], []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = v2_datatype(array.dtype)  # ValueError: no v2 datatype (a big-endian array, say)
        if not array.dtype.isnative:
            raise ValueError(f"input '{name}' is not in the machine's byte order")
        if array.dtype == object and not all(isinstance(item, (bytes, str)) for item in array.flat):
            raise TypeError(f"input '{name}' holds objects that are not bytes or str")
        raw = encode_raw(array)
        described.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                          "parameters": {"binary_data_size": memoryview(raw).nbytes}})
        raws.append(raw)
    header: dict[str, Any] = {"inputs": described, "parameters": {**(parameters or {}), "binary_data_output": True}}
    if outputs is not None:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    return json.dumps(header, default=_plain, allow_nan=False).encode(), raws


def _plain(value: Any) -> Any:
    """numpy scalars in request parameters as the JSON numbers they are."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"request parameter value {value!r} is not JSON")


def decode_response(status: int, headers: dict[bytes, bytes], body: bytearray) -> dict[str, np.ndarray]:
    """The outputs of a 200 answer (writable arrays, as a handle's are; ``Outputs`` with the response's
    parameters where it has any), or the error the route gave; an answer that is not the protocol's is
    UNAVAILABLE (the request may have run)."""
    try:
        return _decoded(status, headers, body)
    except InferenceError as exc:
        if status != 200 or exc.code != ErrorCode.INVALID_ARGUMENT:
            raise
        fault: Exception = exc  # outputs whose bytes disagree with their shape: the answer's fault, not the caller's
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        fault = exc
    raise InferenceError(ErrorCode.UNAVAILABLE, f"the ingress listener's answer did not parse ({fault}); the request "
                                                "may have run, retry if it may run twice") from None


def _decoded(status: int, headers: dict[bytes, bytes], body: bytearray) -> dict[str, np.ndarray]:
    header_length = headers.get(b"inference-header-content-length")
    size = int(header_length) if header_length is not None else len(body)
    message = json.loads(body[:size])
    if status != 200:
        raise InferenceError(_CODE_OF_STATUS.get(status, ErrorCode.INTERNAL), message.get("error", f"HTTP {status}"))
    results, offset = {}, size
    view = memoryview(body)
    for output in message.get("outputs", []):
        shape = tuple(output["shape"])
        data_size = output.get("parameters", {}).get("binary_data_size")
        if data_size is None:  # JSON data (the route answers binary when asked; kept for completeness)
            results[output["name"]] = np.array(output["data"], dtype=object if output["datatype"] == "BYTES"
                                               else None).reshape(shape)
            continue
        results[output["name"]] = decode_raw(output["name"], output["datatype"], shape,
                                             view[offset:offset + data_size])
        offset += data_size
    return Outputs(results, message["parameters"]) if message.get("parameters") else results


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self):
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future | None = None
        self.closed = False
        self.idle_since = 0.0
        self.early: tuple | None = None  # an answer that came before any request (the listener's refusal)
        self._headers: dict[bytes, bytes] = {}
        self._body = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"the ingress listener's answer did not parse: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("the connection to the ingress listener closed before it answered"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        answer, headers, body = self.answer, self._headers, self._body
        self.answer, self._headers, self._body = None, {}, bytearray()
        if not self.parser.should_keep_alive():
            self.close()
        if answer is None:
            self.early = (self.parser.get_status_code(), headers, body)
        elif not answer.done():
            answer.set_result((self.parser.get_status_code(), headers, body))

    def _fail(self, exc: Exception) -> None:
        self.close()
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # nothing of a request given up goes out after it

    def usable(self, idle_timeout_s: float) -> bool:
        """Whether an idle connection may carry the next request: open, idle for less than the listener keeps
        one (less a second), and nothing to read (an end of file the loop has not seen yet: a caller's loop
        may not have run since the server closed it)."""
        if self.closed or self.transport.is_closing() or time.monotonic() - self.idle_since > idle_timeout_s - 1:
            return False
        socket = self.transport.get_extra_info("socket")
        if socket is None:
            return True
        poller = select.poll()
        poller.register(socket.fileno(), select.POLLIN)
        return not poller.poll(0)

    async def send(self, request: list) -> tuple[int, dict[bytes, bytes], bytearray]:
        """Write the request's parts; its answer's status, headers (lower-case names) and body. Raises
        ListenerRefused where the connection ended before the request went out."""
        if self.early is not None:
            return self.early
        if self.closed:
            raise ListenerRefused("the ingress listener closed the connection before the request went out")
        self.answer = asyncio.get_running_loop().create_future()
        try:
            self.transport.writelines(request)
            return await self.answer
        except BaseException:
            self.close()  # cancelled mid-answer: the rest of it would be read as the next request's
            raise


@dataclass
class ListenerPool:
    """Keep-alive connections of one event loop to one listener."""

    listener: Listener
    idle: list[_Connection] = field(default_factory=list)
    opened: int = 0
    waiting: list[asyncio.Future] = field(default_factory=list)

    async def post(self, path: str, header: bytes, raws: list) -> tuple[int, dict[bytes, bytes], bytearray]:
        length = len(header) + sum(memoryview(raw).nbytes for raw in raws)
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.listener.address}\r\nContent-Type: application/octet-stream\r\n"
                f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {length}\r\n\r\n").encode()
        connection = await self._take()
        try:
            return await connection.send([head, header, *raws])
        finally:
            self._give_back(connection)

    async def _take(self) -> _Connection:
        while True:
            connection = self._idle_one()
            if connection is not None:
                return connection
            if self.opened < POOL_SIZE:
                return await self._open()
            waiter = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                connection = await waiter  # a connection given back, or None: a place to open one
            except asyncio.CancelledError:
                if waiter in self.waiting:
                    self.waiting.remove(waiter)
                elif not waiter.cancelled():  # handed something just as the caller gave up: pass it on
                    if waiter.result() is None:
                        self._wake(None)
                    else:
                        self._give_back(waiter.result())
                raise
            if connection is not None and connection.usable(self.listener.idle_timeout_s):
                return connection
            if connection is not None:
                self._drop(connection)

    def _idle_one(self) -> _Connection | None:
        while self.idle:
            connection = self.idle.pop()
            if connection.usable(self.listener.idle_timeout_s):
                return connection
            self._drop(connection)
        return None

    async def _open(self) -> _Connection:
        self.opened += 1
        try:
            _, connection = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                _Connection, self.listener.address, self.listener.port), CONNECT_TIMEOUT_S)
        except BaseException as exc:
            self.opened -= 1
            self._wake(None)
            if isinstance(exc, (OSError, asyncio.TimeoutError)):
                raise ListenerRefused(f"{self.listener.address}:{self.listener.port}: {exc!r}") from exc
            raise
        return connection

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self.opened -= 1

    def _give_back(self, connection: _Connection) -> None:
        if connection.closed:
            self.opened -= 1
            self._wake(None)
            return
        connection.idle_since = time.monotonic()
        if not self._wake(connection):
            self.idle.append(connection)

    def _wake(self, connection: _Connection | None) -> bool:
        """Hand ``connection`` (None: a free place) to the first call still waiting; False if none waits."""
        while self.waiting:
            waiter = self.waiting.pop(0)
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def close(self) -> None:
        for connection in self.idle:
            connection.close()
        self.opened -= len(self.idle)
        self.idle.clear()


class ListenerRoute:
    """A client's requests to one listener, for any model: a pool per event loop, and the handle's turn
    while the listener refuses connections."""

    def __init__(self, listener: Listener):
        self.listener = listener
        self.pools: dict[asyncio.AbstractEventLoop, ListenerPool] = {}
        self.refused_until = 0.0
        self.check_first = False  # after a refusal: another server may hold the port now

    def request(self, model: str, inputs: dict[str, Any], outputs: list[str] | None, version: int | str | None,
                parameters: dict | None) -> tuple[str, bytes, list] | None:
        """The request as the listener takes it, or None where the handle must take it: what the protocol
        cannot carry as the handle does, a request too large for the listener, or one while it refuses."""
        if time.monotonic() < self.refused_until:
            return None
        try:
            header, raws = encode_request(inputs, outputs, parameters)
        except (TypeError, ValueError):
            return None
        if len(header) + sum(memoryview(raw).nbytes for raw in raws) > self.listener.max_request_bytes:
            return None
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "") + "/infer"
        return path, header, raws

    async def send(self, request: tuple[str, bytes, list]) -> dict[str, np.ndarray]:
        """The outputs; raises ListenerRefused (nothing ran) when the listener takes no connection."""
        try:
            if self.check_first:
                if not await probe(self.listener):
                    raise ListenerRefused(f"no {self.listener.server_name} at {self.listener.address}:"
                                          f"{self.listener.port}")
                self.check_first = False
            status, headers, body = await self._pool().post(*request)
            if status == _TOO_MANY_CONNECTIONS:
                raise ListenerRefused(f"{self.listener.address}:{self.listener.port}: too many connections")
        except ListenerRefused:
            self.refused_until, self.check_first = time.monotonic() + RETRY_AFTER_S, True
            raise
        except ConnectionError as exc:
            raise InferenceError(ErrorCode.UNAVAILABLE, f"{exc}; the request may have run, retry if it may run "
                                                        "twice") from None
        return decode_response(status, headers, body)

    def _pool(self) -> ListenerPool:
        loop = asyncio.get_running_loop()
        pool = self.pools.get(loop)
        if pool is None:
            for ended in [other for other in self.pools if other.is_closed()]:
                del self.pools[ended]  # its connections go with its loop
            pool = self.pools[loop] = ListenerPool(self.listener)
        return pool

    def close(self) -> None:
        """Close the idle connections of this loop's pool (a pool is closed on its own loop)."""
        pool = self.pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            pool.close()
