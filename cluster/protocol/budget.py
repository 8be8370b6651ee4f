"""A bound on the memory an Ingress replica's requests in flight hold, and large bodies decoded off the
event loop.

An HTTP request holds the bytes of its body as they arrive (never what its Content-Length promises: a slow
client would otherwise hold the budget with bytes it never sends), then, once the body is complete, what
decoding it takes: the body, and for JSON a multiple of it (a JSON tensor decodes through Python lists,
about 18x the body's bytes for FP32 data, measured; ``JSON_DECODE_FACTOR`` allows a little more). A gRPC
request arrives whole and reserves on arrival. A request whose reservation does not fit beside the others
answers 503 (retry later); one that could never fit answers 413. The event loop is the only user, so no
lock is needed.
"""

from __future__ import annotations

import asyncio

from deployments.errors import ErrorCode, InferenceError, unavailable

#: Bytes a JSON request needs per byte of body while it decodes (Python lists of floats, then arrays).
JSON_DECODE_FACTOR = 24
#: Bytes a binary request needs per byte of body (views of the body, plus the response).
BINARY_DECODE_FACTOR = 2
#: Bodies (and outputs) larger than this are decoded (encoded) on a worker thread, not the event loop.
OFF_LOOP_BYTES = 1 << 20


def needed_bytes(body_bytes: int, binary: bool) -> int:
    return body_bytes * (BINARY_DECODE_FACTOR if binary else JSON_DECODE_FACTOR)


async def off_loop_if_large(size: int, function, *args):
    """``function(*args)``, on a worker thread when ``size`` bytes are involved: decoding a large body on
    the event loop would stall every other request of the replica meanwhile."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(function, *args)
    return function(*args)


class ByteBudget:
    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def reserve(self, size: int) -> "Reservation":
        reservation = Reservation(self)
        reservation.resize(size)
        return reservation


class Reservation:
    """What one request holds of the budget; a context manager that gives it back."""

    def __init__(self, budget: ByteBudget):
        self.budget, self.size = budget, 0

    def resize(self, size: int) -> None:
        budget = self.budget
        if size > budget.limit:
            raise InferenceError(ErrorCode.TOO_LARGE, f"this request needs about {size} bytes to decode, more "
                                                      f"than the server's in-flight limit of {budget.limit} "
                                                      "(binary tensors need far less than JSON)")
        if budget.used - self.size + size > budget.limit:
            raise unavailable(f"the server is busy: requests in flight hold {budget.used} of its "
                              f"{budget.limit} bytes; retry later")
        budget.used += size - self.size
        self.size = size

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc) -> None:
        self.budget.used -= self.size
        self.size = 0
