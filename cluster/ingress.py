"""The Ingress deployment: KServe v2 / Triton HTTP routes over the model deployments' handles.

It decodes, calls the model's handle, encodes; every failure becomes ``{"error": "..."}`` with the
status from the one error table. The handles are passed in by the app builder.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from cluster import codec
from deployments.errors import ErrorCode, InferenceError, invalid, not_found, unavailable

logger = logging.getLogger(__name__)

SERVER_NAME = "ray-inference-cluster"
EXTENSIONS = ["model_configuration"]
JSON = "application/json"


@dataclass(frozen=True)
class IngressOptions:
    """Limits and names the Ingress needs from the app builder."""

    version: str
    max_request_bytes: int


@serve.deployment
class Ingress:
    """Routes v2 HTTP requests to the model deployments."""

    def __init__(self, models: dict[str, DeploymentHandle], failed: dict[str, str], options: IngressOptions):
        self.models = models
        self.failed = failed
        self.options = options

    async def __call__(self, request: Request) -> Response:
        try:
            status, body = await self._route(request)
        except Exception as exc:  # every error reaches the client as JSON, never as a traceback
            error = InferenceError.from_exception(exc)
            if error.code == ErrorCode.INTERNAL:
                logger.warning("request %s %s failed: %r", request.method, request.url.path, exc)
            status, body = error.http_status, codec.encode_json({"error": error.message})
        return Response(body, status_code=status, media_type=JSON)

    async def _route(self, request: Request) -> tuple[int, bytes]:
        parts = request.url.path.strip("/").split("/")
        method = request.method
        if parts[0] != "v2":
            raise not_found(f"no route {request.url.path}")
        match parts[1:], method:
            case [], "GET":
                return 200, codec.encode_json(self.server_metadata())
            case ["health", "live"], "GET":
                return 200, b""
            case ["health", "ready"], "GET":
                ready = await self.server_ready()
                return (200, b"") if ready else (503, codec.encode_json({"error": "not every model is ready"}))
            case ["repository", "index"], "POST":
                return 200, codec.encode_json(await self.repository_index())
            case ["models", model, *rest], _:
                version = None
                if rest[:1] == ["versions"]:
                    if len(rest) < 2:
                        raise not_found(f"no route {request.url.path}")
                    version, rest = rest[1], rest[2:]
                return await self._model_route(request, model, version, rest)
        raise not_found(f"no route {method} {request.url.path}")

    async def _model_route(
        self, request: Request, model: str, version: str | None, rest: list[str]
    ) -> tuple[int, bytes]:
        match rest, request.method:
            case ["infer"], "POST":
                handle = self.handle(model)
                decoded = codec.decode_infer_request(await self._read_body(request))
                answered, outputs = await handle.infer_versioned.remote(
                    decoded.inputs, decoded.outputs, version
                )
                return 200, codec.encode_infer_response(model, answered, outputs, decoded.id)
            case [], "GET":
                metadata = await self.handle(model).metadata.remote()
                self._check_version(model, version, metadata["versions"])
                return 200, codec.encode_json(metadata)
            case ["ready"], "GET":
                metadata = await self.handle(model).metadata.remote()
                self._check_version(model, version, metadata["versions"])
                return 200, b""
            case ["config"], "GET":
                return 200, codec.encode_json(await self.handle(model).model_config.remote())
        raise not_found(f"no route {request.method} {request.url.path}")

    def handle(self, model: str) -> DeploymentHandle:
        """The model's handle; unknown models are 404, models that failed to configure are 503."""
        if model in self.failed:
            raise unavailable(f"model '{model}' is not available: {self.failed[model]}")
        try:
            return self.models[model]
        except KeyError:
            raise not_found(f"unknown model '{model}'") from None

    @staticmethod
    def _check_version(model: str, version: str | None, versions: list[str]) -> None:
        if not versions:
            raise unavailable(f"model '{model}' is not ready")
        if version is not None and version not in versions:
            raise not_found(f"model '{model}' has no ready version '{version}'; it serves {versions}")

    async def _read_body(self, request: Request) -> bytes:
        limit = self.options.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise InferenceError(ErrorCode.TOO_LARGE, f"request body of {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InferenceError(ErrorCode.TOO_LARGE, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if size == 0:
            raise invalid("request body is empty")
        return b"".join(chunks)

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.options.version, "extensions": EXTENSIONS}

    async def server_ready(self) -> bool:
        """Strict readiness, as Triton's default: ready when every model in the repository is."""
        if self.failed:
            return False
        states = await asyncio.gather(*(h.ready.remote() for h in self.models.values()))
        return all(states)

    async def repository_index(self) -> list[dict[str, str]]:
        rows = [row for rows in await asyncio.gather(*(h.index.remote() for h in self.models.values()))
                for row in rows]
        rows += [{"name": m, "version": "", "state": "UNAVAILABLE", "reason": r} for m, r in self.failed.items()]
        return sorted(rows, key=lambda row: (row["name"], row["version"]))
