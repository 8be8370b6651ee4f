"""Triton's per-model-version statistics: counts and durations, merged across replicas. No Ray here.

Each request adds to ``success`` or ``fail`` (its whole time in the replica), ``queue`` (waiting for a
batch), ``compute_input`` (checking and merging inputs), ``compute_infer`` (the backend call its batch made)
and ``compute_output`` (splitting outputs); ``batch_stats`` counts executions by batch size. With the
response cache, ``cache_hit`` and ``cache_miss`` count the lookups (a hit is a success that never ran).
Failures are also counted by Triton's metric reasons (``FAILURE_REASONS``), and a snapshot carries how many
requests wait for the backend (``pending``), for the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from deployments.observability import host_usage

logger = logging.getLogger(__name__)

#: How soon after a request a replica reports its statistics to the collector.
REPORT_DELAY_S = 0.5
#: How often a replica reports even when idle, so a restarted collector has every live replica's totals
#: back within this long, and one that stops reporting is known to be gone.
HEARTBEAT_S = 10.0

_STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")
#: Triton's ``reason`` label of ``nv_inference_request_failure``: a queue timeout or a full queue, a request
#: the client cancelled, a failing backend call, anything else (a request that fails its checks).
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")
#: Upper bounds of the latency buckets of successful requests, in ns: 100 us to ~145 s, each 1.5x the last
#: (a percentile read from them is off by less than half a bucket). The last bucket has no upper bound.
LATENCY_BOUNDS_NS = tuple(int(100_000 * 1.5**i) for i in range(36))


@dataclass
class Duration:
    """How many times a stage ran and the nanoseconds it took in all."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def merge(self, other: "Duration") -> None:
        self.add(other.ns, other.count)


@dataclass
class BatchStatistics:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ShadowStatistics:
    """What a shadow candidate did with the copies of one version's requests (ric's, not Triton's): answers
    that agreed with the version's, that differed, that failed, copies dropped (its queue was full), and the
    candidate's latency (buckets as ``VersionStatistics.latency``)."""

    agreed: int = 0
    differed: int = 0
    failed: int = 0
    dropped: int = 0
    duration: Duration = field(default_factory=Duration)
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_NS) + 1))

    def record(self, outcome: str, ns: int) -> None:
        """One answered copy: ``outcome`` agreed, differed or failed, after ``ns``."""
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.duration.add(ns)
        self.latency[bisect.bisect_left(LATENCY_BOUNDS_NS, ns)] += 1

    def merge(self, other: "ShadowStatistics") -> None:
        for outcome in ("agreed", "differed", "failed", "dropped"):
            setattr(self, outcome, getattr(self, outcome) + getattr(other, outcome))
        self.duration.merge(other.duration)
        self.latency = [a + b for a, b in zip(self.latency, other.latency)]


@dataclass
class PayloadStatistics:
    """Payload logging of one version's requests (ric's): records sampled and accepted (logged), written,
    not accepted (dropped: the queue was full, the sink slow or down), and accepted but never written (lost:
    no JSON line could hold one, or the sink still failed as its replica stopped)."""

    logged: int = 0
    written: int = 0
    dropped: int = 0
    lost: int = 0

    def merge(self, other: "PayloadStatistics") -> None:
        self.logged += other.logged
        self.written += other.written
        self.dropped += other.dropped
        self.lost += other.lost


@dataclass
class VersionStatistics:
    """Statistics of one model version, as Triton's ``ModelStatistics`` message."""

    last_inference: int = 0  # milliseconds since the epoch
    inference_count: int = 0  # rows inferred
    execution_count: int = 0  # backend calls
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    cache_hit: Duration = field(default_factory=Duration)  # answered from the response cache: the lookup
    cache_miss: Duration = field(default_factory=Duration)  # not in the cache: the lookup and the insert
    batches: dict[int, BatchStatistics] = field(default_factory=dict)
    #: Successful requests per latency bucket (``LATENCY_BOUNDS_NS``); not part of Triton's statistics.
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_NS) + 1))
    #: Failed requests by reason (FAILURE_REASONS); their sum is ``fail.count``.
    failures: dict[str, int] = field(default_factory=dict)
    #: Requests checked and waiting for a backend call when the snapshot was taken (a gauge, not a count).
    pending: int = 0
    #: Shadow candidate ("model:version", version empty for the newest) -> what it did with the copies.
    shadow: dict[str, ShadowStatistics] = field(default_factory=dict)
    payloads: PayloadStatistics = field(default_factory=PayloadStatistics)
    #: Drift monitoring's window per feature ("tensor/feature" -> deployments.operations.drift.FeatureWindow):
    #: a window, not a count, so a replica gone leaves it out (as its queue).
    drift: dict[str, Any] = field(default_factory=dict)

    def record_request(self, ns: int, ok: bool = True, reason: str = "BACKEND") -> None:
        """One request's whole time in the replica: success (with its latency bucket) or failure (with its
        reason, one of FAILURE_REASONS)."""
        if not ok:
            self.fail.add(ns)
            self.failures[reason] = self.failures.get(reason, 0) + 1
            return
        self.success.add(ns)
        self.latency[bisect.bisect_left(LATENCY_BOUNDS_NS, ns)] += 1

    def record_execution(self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One backend call over ``rows`` rows from ``requests`` requests."""
        self.execution_count += 1
        self.last_inference = time.time_ns() // 1_000_000
        batch = self.batches.setdefault(rows, BatchStatistics())
        for total, part, ns in ((self.compute_input, batch.compute_input, input_ns),
                                (self.compute_infer, batch.compute_infer, infer_ns),
                                (self.compute_output, batch.compute_output, output_ns)):
            total.add(ns * requests, requests)  # every request in the batch spent that time
            part.add(ns)

    def merge(self, other: "VersionStatistics") -> None:
        self.last_inference = max(self.last_inference, other.last_inference)
        self.inference_count += other.inference_count
        self.execution_count += other.execution_count
        for stage in _STAGES:
            getattr(self, stage).merge(getattr(other, stage))
        self.latency = [a + b for a, b in zip(self.latency, other.latency)]
        for reason, count in other.failures.items():
            self.failures[reason] = self.failures.get(reason, 0) + count
        self.pending += other.pending
        self.payloads.merge(other.payloads)
        for key, theirs in other.drift.items():
            if key in self.drift:
                self.drift[key].merge(theirs)
            else:
                self.drift[key] = theirs.copy()
        for candidate, theirs in other.shadow.items():
            self.shadow.setdefault(candidate, ShadowStatistics()).merge(theirs)
        for size, theirs in other.batches.items():
            ours = self.batches.setdefault(size, BatchStatistics())
            for part in fields(BatchStatistics):
                getattr(ours, part.name).merge(getattr(theirs, part.name))

    def to_triton(self, name: str, version: int | str) -> dict[str, Any]:
        """Triton's JSON form (``GET /v2/models/<m>/stats``); the gRPC message has the same fields."""
        duration = lambda d: {"count": d.count, "ns": d.ns}  # noqa: E731
        stats = {stage: duration(getattr(self, stage)) for stage in _STAGES}
        return {
            "name": name,
            "version": str(version),
            "last_inference": self.last_inference,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": stats,
            "response_stats": {},  # Triton 2.51 fills none, decoupled models too (test_differential_triton.py)
            "batch_stats": [
                {"batch_size": size, **{part.name: duration(getattr(batch, part.name)) for part in fields(BatchStatistics)}}
                for size, batch in sorted(self.batches.items())
            ],
            "memory_usage": [],  # Triton's lists GPU and pinned memory; models here hold host memory only
        }


def percentile_ns(latency: list[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, interpolated within its bucket; None when empty."""
    total = sum(latency)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, count in enumerate(latency):
        if count and seen + count >= rank:
            low = LATENCY_BOUNDS_NS[i - 1] if i else 0
            high = LATENCY_BOUNDS_NS[i] if i < len(LATENCY_BOUNDS_NS) else low * 1.5
            return low + (high - low) * (rank - seen) / count
        seen += count
    return float(LATENCY_BOUNDS_NS[-1])


def merged(reports: list[VersionStatistics]) -> VersionStatistics:
    total = VersionStatistics()
    for report in reports:
        total.merge(report)
    return total


class StatisticsReporter:
    """Sends a replica's cumulative statistics to the collector shortly after it serves, once per burst,
    and whenever the collector asks for them.

    Reports are whole snapshots, so one that is lost or repeated changes nothing; a failed report is
    logged and never disturbs serving. From its start (or first request) on, the reporter waits on the
    collector between reports (a long poll that a statistics request ends, and at most HEARTBEAT_S long).
    """

    def __init__(self, collector: Any, model: str, replica: str,
                 snapshot: Callable[[], Awaitable[dict[int, VersionStatistics]]], node: str = "",
                 custom: Callable[[], dict] = dict, sample: Callable[[], Any] = lambda: None,
                 adopt: Callable[[dict], None] = lambda answer: None):
        """``node`` names the replica's node in the host metrics sent with every report (its IP address);
        ``custom()``: the model's own metric families (custom_metrics.py), sent with every report;
        ``sample()``: the values a drift reference is to be taken from (operations/drift.py; None: none
        wanted), sent with every report; ``adopt(answer)`` takes what the collector answers to one."""
        self._collector = collector  # a handle of the application's StatisticsCollector, or None
        self._model, self._replica, self._snapshot, self._node = model, replica, snapshot, node
        self._custom, self._sample, self._adopt = custom, sample, adopt
        self._scheduled = False
        self._heartbeat: asyncio.Task | None = None
        try:  # with a collector and a running loop, wait on the collector from the start
            self._start(asyncio.get_running_loop())
        except RuntimeError:
            pass  # no loop yet: from the first request on
        #: Requests in the replica now (waiting for a batch or running), sent with every report. A report
        #: follows the end of every burst, so the last one of a burst says how many were left.
        self.in_flight = 0

    async def _beat(self) -> None:
        """Report whenever the collector asks (a statistics request wants current counts), and at least
        every HEARTBEAT_S."""
        while True:
            try:
                await self._collector.next_report.remote(self._model, self._replica, HEARTBEAT_S)
            except Exception as exc:  # the collector restarting: report at the heartbeat's pace meanwhile
                logger.warning("model '%s': waiting on the statistics collector failed: %r", self._model, exc)
                await asyncio.sleep(HEARTBEAT_S)
            await self._report()

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._collector is not None and (self._heartbeat is None or self._heartbeat.done()):
            self._heartbeat = loop.create_task(self._beat())  # (again, should one ever have ended)

    def schedule(self) -> None:
        """Report shortly (and wait on the collector from now on, if not already)."""
        if self._collector is None or self._scheduled:
            return
        self._start(asyncio.get_running_loop())
        self._scheduled = True
        asyncio.get_running_loop().call_later(REPORT_DELAY_S, lambda: asyncio.ensure_future(self._report()))

    async def _report(self) -> None:
        self._scheduled = False
        try:
            answer = await self._collector.report.remote(self._model, self._replica, await self._snapshot(),
                                                         self.in_flight, host_usage.sample(self._node),
                                                         self._custom(), self._sample())
            if answer:
                self._adopt(answer)
        except Exception as exc:
            logger.warning("model '%s': statistics report failed: %r", self._model, exc)
