"""A request checked against its version and waiting to run (Pending), how a batch of them counts in the
version's statistics, and a version's state as the repository index shows it; ModelRunner makes them. No
Ray here."""

from __future__ import annotations

import time
from dataclasses import dataclass

from deployments.backends import Backend, RequestInfo, Tensors
from deployments.observability.statistics import VersionStatistics


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


def record_batch(stats: VersionStatistics, group: list[Pending], results: list, start: int, computed: int) -> None:
    """A backend call's requests in their version's statistics (its results: outputs or errors; ``start`` and
    ``computed``: when the call began and returned), their stage timestamps kept for tracing."""
    done = time.perf_counter_ns()
    rows = sum(p.rows for p in group)
    input_ns = sum(p.queued_ns - p.arrived_ns for p in group) // len(group)
    stats.record_execution(rows, len(group), input_ns, computed - start, (done - computed) // len(group))
    for request, result in zip(group, results):
        request.started_ns, request.computed_ns, request.done_ns = start, computed, done
        stats.queue.add(start - request.queued_ns)
        stats.record_request(done - request.arrived_ns, ok=not isinstance(result, Exception))
        if not isinstance(result, Exception):
            stats.inference_count += request.rows
