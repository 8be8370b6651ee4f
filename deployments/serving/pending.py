"""A request checked against its version and waiting to run (Pending), and a version's state as the
repository index shows it; ModelRunner makes both. No Ray here."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.backends import Backend, RequestInfo, Tensors


@dataclass
class VersionState:
    """A version's state as the repository index shows it: READY or UNAVAILABLE with a reason."""

    state: str
    reason: str = ""


@dataclass
class Pending:
    """A checked request waiting to run: its version and backend, inputs, row count and timestamps.

    It holds the backend it was checked against, so a version swapped out meanwhile still answers it.
    """

    version: int
    backend: Backend
    inputs: Tensors
    outputs: list[str] | None
    rows: int
    arrived_ns: int
    queued_ns: int
    #: What a backend that takes whole requests learns of it (parameters, id, sequence, BLS callers).
    info: RequestInfo = RequestInfo()
    #: perf_counter_ns after which the request may no longer start (Triton's queue policy, REJECT).
    deadline_ns: int | None = None
    #: perf_counter_ns after which the request waits behind every priority level (queue policy, DELAY).
    delay_after_ns: int | None = None
    #: Its priority level (1 the highest; 0 for a model without levels).
    priority: int = 0
    #: perf_counter_ns when its backend call started, returned, and its outputs were split (for tracing).
    started_ns: int = 0
    computed_ns: int = 0
    done_ns: int = 0
