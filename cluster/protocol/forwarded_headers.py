"""Triton's header forwarding (``--http-header-forward-pattern``, ``--grpc-header-forward-pattern``): the
HTTP headers or gRPC metadata of an inference request whose names match a regular expression reach the
model as string request parameters (a Python model's ``request.parameters()``; a traffic split's
``sticky_by``). As Triton: a partial match, case-insensitive unless the pattern starts with ``(?-i)``, and a
matching header named as one of Triton's reserved parameters is refused (400). A parameter the request sets
itself is kept over a header of the same name. Pure."""

from __future__ import annotations

import re
from typing import Mapping

from deployments.errors import invalid

#: Triton's reserved parameters, which no header may set.
RESERVED = ("sequence_id", "priority", "timeout", "sequence_start", "sequence_end", "headers")


def compile_pattern(pattern: str) -> re.Pattern | None:
    """The pattern as Triton reads it (raises re.error for a broken one); None for no forwarding."""
    if not pattern:
        return None
    if pattern.startswith("(?-i)"):
        return re.compile(pattern[len("(?-i)"):])
    return re.compile(pattern, re.IGNORECASE)


def forward(parameters: dict, headers: Mapping[str, str], pattern: re.Pattern | None) -> None:
    """Add the matching headers to a request's parameters."""
    if pattern is None:
        return
    for name, value in headers.items():
        if not pattern.search(name):
            continue
        if name.lower() in RESERVED or name.lower().startswith("triton_"):
            raise invalid(f"Header '{name}' is reserved for Triton usage and cannot be forwarded.")
        parameters.setdefault(name, value)
