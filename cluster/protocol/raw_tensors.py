"""Raw tensor bytes <-> numpy: the HTTP binary data extension and gRPC ``raw_*_contents`` share these.

Fixed-size types are row-major little-endian (BOOL one byte); BYTES elements are a 4-byte little-endian
length followed by the bytes. Sizes are checked against the bytes actually received before anything is
allocated, and aligned buffers become numpy views without a copy.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from deployments.config.dtypes import numpy_dtype, v2_datatype
from deployments.errors import ErrorCode, InferenceError, invalid

_LENGTH = struct.Struct("<I")
#: BYTES elements one request may carry in all. Each becomes a Python object, decoded while the replica's
#: GIL is held: 1 M take ~0.4 s here, and 16 M empty ones fit in one 64 MB gRPC message (over 30 s of CPU,
#: measured, delaying every other request of the replica).
MAX_BYTES_ELEMENTS = 1 << 20


def check_bytes_elements(count: int) -> None:
    """Refuse (413) a request whose BYTES inputs hold ``count`` elements in all, past MAX_BYTES_ELEMENTS,
    before they are decoded (the codecs count each input's once its data could hold them)."""
    if count > MAX_BYTES_ELEMENTS:
        raise InferenceError(ErrorCode.TOO_LARGE, f"the request's BYTES inputs hold {count} elements; the server "
                                                  f"decodes at most {MAX_BYTES_ELEMENTS} in one request")


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], buffer: memoryview | bytes,
               bytes_before: int = 0) -> np.ndarray:
    """A tensor from its raw bytes; raises INVALID_ARGUMENT naming the input if the bytes disagree.
    ``bytes_before``: the BYTES elements the request's other inputs decoded already (MAX_BYTES_ELEMENTS)."""
    try:
        dtype = numpy_dtype(datatype)
    except ValueError as exc:
        raise invalid(f"input '{name}': {exc}") from None
    count = math.prod(shape)
    size = len(buffer)
    if datatype == "BYTES":
        return _decode_bytes(name, count, buffer, bytes_before).reshape(shape)
    expected = count * dtype.itemsize
    if size != expected:
        raise invalid(
            f"input '{name}': {size} bytes of data, but shape {list(shape)} of {datatype} needs {expected}"
        )
    array = np.frombuffer(buffer, dtype=dtype)
    if not array.flags.aligned:
        array = array.copy()
    return array.reshape(shape)


def _decode_bytes(name: str, count: int, buffer: memoryview | bytes, bytes_before: int) -> np.ndarray:
    size = len(buffer)
    if count * _LENGTH.size > size:
        raise invalid(f"input '{name}': {size} bytes cannot hold {count} BYTES elements")
    check_bytes_elements(bytes_before + count)
    items = []
    offset = 0
    view = memoryview(buffer)
    for _ in range(count):  # the shape's count, never more: the data may claim millions of empty elements
        if offset + _LENGTH.size > size:
            raise invalid(f"input '{name}': truncated BYTES length prefix at byte {offset}")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if offset + length > size:
            raise invalid(f"input '{name}': BYTES element of {length} bytes runs past the data at byte {offset}")
        items.append(bytes(view[offset:offset + length]))
        offset += length
    if offset != size:
        raise invalid(f"input '{name}': {size - offset} bytes of data after the {count} BYTES elements the "
                      "shape needs")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def encode_raw(array: np.ndarray) -> bytes | memoryview:
    """A tensor's raw bytes (BYTES elements length-prefixed). A fixed-size tensor's are a byte view of the
    array itself (copied only if it is not contiguous): whoever writes them out (a response body's join, a
    shared memory region) makes the one copy; ``bytes()`` of it where a bytes object is needed."""
    if v2_datatype(array.dtype) == "BYTES":
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts += [_LENGTH.pack(len(data)), data]
        return b"".join(parts)
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
