"""gzip / deflate bodies both ways, and the limits that keep a small body from expanding without bound."""

from __future__ import annotations

import gzip
import zlib

import pytest

from cluster.protocol.compression import compress, decompress
from deployments.errors import ErrorCode, InferenceError


@pytest.mark.parametrize("encoding, packed", [("gzip", gzip.compress(b"payload")), ("deflate", zlib.compress(b"payload")),
                                              (None, b"payload"), ("identity", b"payload")])
def test_decompress(encoding, packed):
    assert decompress(packed, encoding, limit=100) == b"payload"


def test_decompression_stops_at_the_limit():
    bomb = gzip.compress(b"\0" * 10_000_000)
    with pytest.raises(InferenceError) as info:
        decompress(bomb, "gzip", limit=1000)
    assert info.value.code == ErrorCode.TOO_LARGE


@pytest.mark.parametrize("encoding, body, message", [
    ("br", b"x", "unsupported Content-Encoding"),
    ("gzip", b"not gzip", "not valid gzip"),
    ("gzip", gzip.compress(b"payload" * 100)[:-12], "truncated"),
])
def test_bad_compressed_bodies(encoding, body, message):
    with pytest.raises(InferenceError, match=message) as info:
        decompress(body, encoding, limit=10_000)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT


def test_compress_picks_what_the_client_accepts():
    assert compress(b"x" * 100, "gzip, deflate")[1] == "gzip"
    packed, encoding = compress(b"x" * 100, "deflate")
    assert encoding == "deflate" and zlib.decompress(packed) == b"x" * 100
    assert compress(b"x", None) == (b"x", None) and compress(b"x", "br") == (b"x", None)
