"""The KServe v2 / Triton HTTP routes, over the data plane, for either listener of the Ingress replica.

Each route decodes, calls the data plane, encodes; every failure becomes ``{"error": "..."}`` with the
status from the one error table. The replica's own HTTP server (``http_server``) and Serve's HTTP proxy
(through ``Ingress.__call__``) hand requests here alike: a request is read as ``method``, ``path``,
``headers`` and ``stream()``, and answered with a ``Reply``.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import re


from cluster.protocol import codec, compression, metrics
from cluster.protocol.budget import ByteBudget, Reservation, needed_bytes, off_loop_if_large
from cluster.protocol.dataplane import DataPlane, bounded
from cluster.protocol.forwarded_headers import forward
from cluster.protocol.http_messages import HttpRequest, Reply
from cluster.protocol.restrictions import Restrictions, http_api_group
from cluster.protocol.shared_memory import NO_CUDA
from deployments.errors import ErrorCode, InferenceError, invalid, not_found

logger = logging.getLogger(__name__)

JSON = "application/json"


def declared_length(request: HttpRequest) -> int | None:
    """The body size the client declares (Content-Length), if it is a number."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isascii() and declared.isdigit() else None


#: Where binary tensors start in a body read for them (bytes; a cache line, which suits every datatype).
ALIGNMENT = 64
#: The largest body of a request that changes or asks about the server rather than infers (repository index,
#: log and trace settings, shared memory registration); loads, which may carry model files, have the
#: request limit.
CONTROL_BODY_BYTES = 1 << 20


async def within(seconds: float, awaitable):
    """``await awaitable``, TimeoutError after ``seconds``: without the task ``asyncio.wait_for`` makes for
    every call before Python 3.12 (every HTTP body is read this way)."""
    if not hasattr(asyncio, "timeout"):  # Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with asyncio.timeout(seconds):
        return await awaitable


def _aligned(chunks: list[bytes], size: int, aligned_at: int) -> memoryview:
    """The body's chunks copied into one buffer with byte ``aligned_at`` on an ALIGNMENT boundary (the one
    copy a join would make too), so that the binary tensors after it become numpy views without a copy."""
    buffer = bytearray(size + ALIGNMENT)
    start = -(ctypes.addressof(ctypes.c_char.from_buffer(buffer)) + aligned_at) % ALIGNMENT
    view, end = memoryview(buffer), start
    for chunk in chunks:
        view[end:end + len(chunk)] = chunk
        end += len(chunk)
    return view[start:end]


def json_response(message, status: int = 200) -> Reply:
    return Reply(status, codec.encode_json(message), JSON)


def empty_response(status: int = 200) -> Reply:
    return Reply(status)


class HttpApi:
    """The routes; ``respond`` answers any request, errors included."""

    def __init__(self, plane: DataPlane, restrictions: Restrictions, budget: ByteBudget, max_request_bytes: int,
                 body_timeout_s: float, forwarded: re.Pattern | None = None):
        """``forwarded``: the headers of inference requests that reach the model (forwarded_headers.py)."""
        self.plane = plane
        self.forwarded = forwarded
        self.restrictions = restrictions
        self.budget = budget
        self.max_request_bytes = max_request_bytes
        self.body_timeout_s = body_timeout_s
        #: Requests being answered now (what the ingress's autoscaler counts).
        self.ongoing = 0

    async def respond(self, request: HttpRequest) -> Reply:
        self.ongoing += 1
        try:
            return await self._route(request)
        except Exception as exc:  # every error reaches the client as JSON, never as a traceback
            error = InferenceError.from_exception(exc)
            if error.code == ErrorCode.INTERNAL:
                logger.warning("request %s %s failed: %r", request.method, request.path, exc)
            return json_response({"error": error.message}, error.http_status)
        finally:
            self.ongoing -= 1

    async def _route(self, request: HttpRequest) -> Reply:
        parts = request.path.strip("/").split("/")
        method = request.method
        if parts[0] == "v2":
            self.restrictions.check_http(http_api_group(parts[1:], method), request.headers)
            match parts[1:], method:
                case [], "GET":
                    return json_response(self.plane.server_metadata())
                case ["health", "live"], "GET":
                    return empty_response()
                case ["health", "ready"], "GET":
                    if await self.plane.server_ready():
                        return empty_response()
                    return json_response({"error": "not every model is ready"}, 503)
                case ["repository", "index"], "POST":
                    body = await self._read_body(request, allow_empty=True, limit=CONTROL_BODY_BYTES)
                    ready = bool(body and codec.decode_json_object(body).get("ready"))
                    return json_response(await self.plane.repository_index(ready_only=ready))
                case ["repository", "models", model, ("load" | "unload") as action], "POST":
                    self.plane.check_model_control()  # refused before a body of model files is read
                    body = await self._read_body(request, allow_empty=True)  # a load may carry model files
                    parameters = codec.decode_json_object(body).get("parameters") if body else None
                    await self.plane.set_loaded(model, action == "load", parameters)
                    return empty_response()
                case ["repository", "models", model, "traffic"], ("GET" | "POST"):
                    body = await self._read_body(request, limit=CONTROL_BODY_BYTES) if method == "POST" else None
                    return json_response(await self.plane.traffic(model, codec.decode_json_object(body)
                                                                  if body is not None else None))
                case ["models", "stats"], "GET":
                    return json_response(await self.plane.statistics())
                case ["trace", "setting"], _:
                    return await self._trace_setting(request, None)
                case ["logging"], "GET":
                    return json_response(await self.plane.log_settings())
                case ["logging"], "POST":
                    changes = codec.decode_json_object(await self._read_body(request, limit=CONTROL_BODY_BYTES))
                    return json_response(await self.plane.log_settings(changes))
                case ["systemsharedmemory", *rest], _:
                    return await self._system_shared_memory(request, rest)
                case ["cudasharedmemory", *rest], _:
                    return self._cuda_shared_memory(request, rest)
                case ["models", model, "versions", version, *rest], _:
                    return await self._model_route(request, model, version, rest)
                case ["models", model, *rest], _:
                    return await self._model_route(request, model, None, rest)
        if parts == ["metrics"] and method == "GET":  # Triton's metrics (its :8002/metrics), the whole cluster
            text = await bounded(self.plane.collector.prometheus.remote(), "the statistics collector")
            return Reply(200, text, metrics.CONTENT_TYPE)
        raise not_found(f"no route {method} {request.path}")

    async def _trace_setting(self, request: HttpRequest, model: str | None) -> Reply:
        """Triton's trace extension: GET the settings (global, or a model's), POST changes (null clears)."""
        if request.method == "GET":
            return json_response(await self.plane.trace_settings(model))
        if request.method == "POST":
            changes = codec.decode_json_object(await self._read_body(request, limit=CONTROL_BODY_BYTES))
            return json_response(await self.plane.trace_settings(model, changes))
        raise not_found(f"no route {request.method} {request.path}")

    async def _system_shared_memory(self, request: HttpRequest, rest: list[str]) -> Reply:
        regions = self.plane.shared_memory
        match rest, request.method:
            case ["status"], "GET":
                return json_response(await regions.status())
            case ["region", name, "status"], "GET":
                return json_response(await regions.status(name))
            case ["region", name, "register"], "POST":
                body = codec.decode_json_object(await self._read_body(request, limit=CONTROL_BODY_BYTES))
                await regions.register(name, body.get("key"), body.get("offset", 0), body.get("byte_size"))
                return empty_response()
            case ["unregister"], "POST":
                await regions.unregister()
                return empty_response()
            case ["region", name, "unregister"], "POST":
                await regions.unregister(name)
                return empty_response()
        raise not_found(f"no route {request.method} {request.path}")

    def _cuda_shared_memory(self, request: HttpRequest, rest: list[str]) -> Reply:
        """No CUDA shared memory: no regions to list or unregister, and registering one is refused."""
        match rest, request.method:
            case ["status"], "GET":
                return json_response([])
            case ["region", name, "status"], "GET":
                raise not_found(f"Unable to find cuda shared memory region: '{name}'")
            case (["unregister"] | ["region", _, "unregister"]), "POST":
                return empty_response()
            case ["region", _, "register"], "POST":
                raise invalid(NO_CUDA)
        raise not_found(f"no route {request.method} {request.path}")

    async def _model_route(self, request: HttpRequest, model: str, version: str | None, rest: list[str]) -> Reply:
        match rest, request.method:
            case ["infer"], "POST":
                self.plane.handle(model)  # unknown or failed models answer before the body is read
                header = request.headers.get(codec.HEADER_LENGTH)
                encoding = request.headers.get("content-encoding")
                aligned_at = int(header) if header and header.isascii() and header.isdigit() and not encoding else None
                with self.budget.reserve(0) as held:  # what has arrived, then what decoding it needs
                    body = compression.decompress(await self._read_body(request, held, aligned_at=aligned_at),
                                                  encoding, self.max_request_bytes)
                    held.resize(needed_bytes(len(body), header is not None))
                    decoded = await off_loop_if_large(len(body), codec.decode_infer_request, body, header)
                    forward(decoded.parameters, request.headers, self.forwarded)
                    answered, outputs = await self.plane.infer_request(model, version, decoded)
                    size = sum(getattr(array, "nbytes", 0) for array in outputs.values())
                    content, header_length = await off_loop_if_large(size, codec.encode_infer_response, model,
                                                                     answered, outputs, decoded)
                headers = {} if header_length is None else {codec.HEADER_LENGTH: str(header_length)}
                content, encoding = compression.compress(content, request.headers.get("accept-encoding"))
                if encoding:
                    headers["Content-Encoding"] = encoding
                media_type = JSON if header_length is None else "application/octet-stream"
                return Reply(200, content, media_type, headers)
            case [("generate" | "generate_stream") as kind], "POST":
                return await self._generate(request, model, version, stream=kind == "generate_stream")
            case [], "GET":
                return json_response(await self.plane.model_metadata(model, version))
            case ["ready"], "GET":
                await self.plane.model_metadata(model, version)
                return empty_response()
            case ["config"], "GET":
                return json_response(await self.plane.model_config(model))
            case ["stats"], "GET":
                return json_response(await self.plane.statistics(model, version))
            case ["trace", "setting"], _:
                return await self._trace_setting(request, model)
        raise not_found(f"no route {request.method} {request.path}")

    async def _generate(self, request: HttpRequest, model: str, version: str | None, stream: bool) -> Reply:
        """Triton's generate extension: ``generate`` answers the one response as JSON; ``generate_stream``
        sends every response as a server-sent event (``data: {...}``), an error after the first as an event
        with ``error``."""
        metadata = await self.plane.model_metadata(model, version)
        batching = bool(metadata["inputs"]) and metadata["inputs"][0]["shape"][:1] == [-1]
        with self.budget.reserve(0) as held:
            body = await self._read_body(request, held)
            held.resize(needed_bytes(len(body), False))
            decoded = await off_loop_if_large(len(body), codec.decode_generate_request, body, metadata["inputs"],
                                              batching)
            forward(decoded.parameters, request.headers, self.forwarded)
        responses = self.plane.stream_request(model, version, decoded)
        encode = lambda answered, outputs: codec.encode_generate_response(  # noqa: E731
            model, answered, outputs, decoded, batching)
        if not stream:
            answers = [encode(*answer) async for answer in responses]
            if len(answers) != 1:
                raise invalid(f"model '{model}' sent {len(answers)} responses; /generate takes exactly one "
                              "(use /generate_stream)")
            return json_response(answers[0])
        first = await anext(responses, None)  # errors before the first response answer with their status

        async def events():
            if first is None:
                return
            yield b"data: " + codec.encode_json(encode(*first)) + b"\n\n"
            try:
                async for answer in responses:
                    yield b"data: " + codec.encode_json(encode(*answer)) + b"\n\n"
            except Exception as exc:
                yield b"data: " + codec.encode_json({"error": InferenceError.from_exception(exc).message}) + b"\n\n"

        return Reply(200, media_type="text/event-stream; charset=utf-8", events=events())

    async def _read_body(self, request: HttpRequest, held: Reservation | None = None, allow_empty: bool = False,
                         aligned_at: int | None = None, limit: int | None = None) -> bytes | memoryview:
        """The body, refused (413) past ``limit`` (default ``max_request_bytes``) before more of it is read, and
        (408) when it has not all arrived within ``body_timeout_s``. It holds of the in-flight budget (in
        ``held``, or in a reservation of its own while it is read) only the bytes that have arrived: a client
        that declares a large body and sends it slowly (or never) holds what it sent, never what it promised;
        joining them takes as much again. With ``aligned_at`` (the offset of the binary tensors, after the
        JSON header) the body is joined into a buffer where that offset falls on a 64-byte boundary, so that
        the tensors become numpy views of it without a copy (joined bytes would put them wherever the
        header's length leaves them, and an unaligned tensor is copied)."""
        limit = limit or self.max_request_bytes
        declared = declared_length(request)
        if declared is not None and declared > limit:
            raise InferenceError(ErrorCode.TOO_LARGE, f"request body of {declared} bytes exceeds the limit of {limit}")
        if held is None:
            with self.budget.reserve(0) as own:
                return await self._read_body(request, own, allow_empty, aligned_at, limit)
        arrived = request.body.arrived() if isinstance(request, HttpRequest) else None
        try:
            chunks, size = (self._counted(arrived, held, limit) if arrived is not None else
                            await within(self.body_timeout_s, self._read_chunks(request, held, limit)))
        except asyncio.TimeoutError:
            raise InferenceError(ErrorCode.TIMEOUT, f"the request body did not arrive within {self.body_timeout_s:g} s"
                                 ) from None
        if size == 0 and not allow_empty:
            raise invalid("request body is empty")
        held.resize(2 * size)  # the chunks and their join, until the chunks go
        if aligned_at is not None and 0 < aligned_at <= size:
            return _aligned(chunks, size, aligned_at)
        return b"".join(chunks)

    @staticmethod
    async def _read_chunks(request: HttpRequest, held: Reservation, limit: int) -> tuple[list[bytes], int]:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InferenceError(ErrorCode.TOO_LARGE, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            held.resize(size)
        return chunks, size

    @staticmethod
    def _counted(chunks: list[bytes], held: Reservation, limit: int) -> tuple[list[bytes], int]:
        """A body that arrived whole, held against the budget as ``_read_chunks`` holds one that streams."""
        size = sum(len(chunk) for chunk in chunks)
        if size > limit:
            raise InferenceError(ErrorCode.TOO_LARGE, f"request body exceeds the limit of {limit} bytes")
        held.resize(size)
        return chunks, size
