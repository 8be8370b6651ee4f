"""HTTP body compression as tritonclient uses it: gzip and deflate (zlib), both ways.

Decompression stops at the request size limit, so a small compressed body cannot expand without bound.
"""

from __future__ import annotations

import gzip
import zlib

from deployments.errors import ErrorCode, InferenceError, invalid

#: Content-Encoding -> zlib window bits (gzip framing, zlib framing).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before compression; ``identity`` or no encoding passes it through."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    wbits = _WBITS.get(encoding.strip().lower())
    if wbits is None:
        raise invalid(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise invalid(f"body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise InferenceError(ErrorCode.TOO_LARGE, f"decompressed request body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise invalid(f"{encoding} body is truncated")
    return data


def compress(body: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """Compress a response body with the first of gzip / deflate the client accepts."""
    accepted = {part.split(";")[0].strip().lower() for part in (accept_encoding or "").split(",")}
    if "gzip" in accepted:
        return gzip.compress(body, compresslevel=1), "gzip"
    if "deflate" in accepted:
        return zlib.compress(body, 1), "deflate"
    return body, None
