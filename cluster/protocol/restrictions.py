"""Triton's restricted APIs: API groups that answer only requests carrying a given header key and value.

Triton configures them with ``--http-restricted-api`` and ``--grpc-restricted-protocol``
(``<group>,<group>:<key>=<value>``); ric takes one setting for both transports (``ric serve
--restricted-api``, builder arg ``restricted_apis``). Over gRPC the client sends the key prefixed with
``triton-grpc-protocol-``, as Triton expects. A request without the header, or with another value, is
refused with Triton's text: HTTP 403, gRPC UNAVAILABLE.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deployments.errors import ErrorCode, InferenceError

ApiGroup = Literal["health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
                   "statistics", "trace", "logging"]
API_GROUPS: tuple[str, ...] = ApiGroup.__args__
#: What a gRPC client puts before the key (Triton's gRPC metadata convention).
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"


class Restriction(BaseModel):
    """API groups that need the header ``key: value``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    apis: list[ApiGroup] = Field(min_length=1, description=f"API groups: {', '.join(API_GROUPS)}.")
    key: str = Field(min_length=1, description="Header (HTTP) or metadata key (gRPC, with the "
                                               f"'{GRPC_HEADER_PREFIX}' prefix) the requests must carry.")
    value: str = Field(description="Its value.")

    @field_validator("key")
    @classmethod
    def _header_name(cls, key: str) -> str:
        if not key.isascii() or any(c.isspace() or c in ":=," for c in key):
            raise ValueError(f"{key!r} is not a header name")
        return key.lower()

    @classmethod
    def parse(cls, text: str) -> "Restriction":
        """Triton's command-line form ``<group>[,<group>...]:<key>=<value>``."""
        groups, separator, header = text.partition(":")
        key, equals, value = header.partition("=")
        if not separator or not equals:
            raise ValueError(f"{text!r}: expected <group>[,<group>...]:<key>=<value>")
        return cls(apis=[group.strip() for group in groups.split(",") if group.strip()], key=key.strip(), value=value)


def check_unique(restrictions: list[Restriction]) -> list[Restriction]:
    """Each API group may be restricted once (as Triton requires)."""
    seen: set[str] = set()
    for restriction in restrictions:
        twice = seen & set(restriction.apis)
        if twice:
            raise ValueError(f"API group '{sorted(twice)[0]}' is restricted more than once")
        seen |= set(restriction.apis)
    return restrictions


class Restrictions:
    """The checks a transport runs before it answers a request of an API group."""

    def __init__(self, restrictions: list[Restriction]):
        self.by_group = {group: (r.key, r.value) for r in restrictions for group in r.apis}

    def check_http(self, group: str | None, headers: Mapping[str, str]) -> None:
        key, value = self.by_group.get(group, (None, None))
        if key is not None and not _same(headers.get(key), value):
            raise InferenceError(ErrorCode.RESTRICTED, f"This API is restricted, expecting header '{key}'")

    def check_grpc(self, group: str, metadata: Mapping[str, str]) -> None:
        key, value = self.by_group.get(group, (None, None))
        if key is not None and not _same(metadata.get(GRPC_HEADER_PREFIX + key), value):
            raise InferenceError(ErrorCode.RESTRICTED,
                                 f"This protocol is restricted, expecting header '{GRPC_HEADER_PREFIX}{key}'")


def _same(given: str | bytes | None, expected: str) -> bool:
    if given is None:
        return False
    given_bytes = given if isinstance(given, bytes) else given.encode()
    return hmac.compare_digest(given_bytes, expected.encode())


def http_api_group(parts: list[str], method: str) -> str | None:
    """The API group of an HTTP route (``parts``: the path after ``/v2``), or None for no known route."""
    match parts, method:
        case [], _:
            return "metadata"
        case ["health", *_], _:
            return "health"
        case ["repository", *_], _:
            return "model-repository"
        case [("systemsharedmemory" | "cudasharedmemory"), *_], _:
            return "shared-memory"
        case ["trace", *_], _:
            return "trace"
        case ["logging", *_], _:
            return "logging"
        case ["models", "stats"], _:
            return "statistics"
        case ["models", _, "versions", _, *rest], _:
            return _model_route_group(rest)
        case ["models", _, *rest], _:
            return _model_route_group(rest)
    return None


def _model_route_group(rest: list[str]) -> str | None:
    return {(): "metadata", ("ready",): "health", ("infer",): "inference", ("config",): "model-config",
            ("stats",): "statistics", ("generate",): "inference", ("generate_stream",): "inference",
            ("trace", "setting"): "trace"}.get(tuple(rest))
