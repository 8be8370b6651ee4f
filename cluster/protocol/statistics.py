"""The StatisticsCollector deployment: one per application, it sums what every model replica reports.

Replicas send their cumulative per-version statistics shortly after serving requests, and every
``HEARTBEAT_S`` while idle; the collector keeps the latest report of each replica (so a lost or repeated
report changes nothing) and adds them up when the statistics endpoint asks. So that the answer is current
(Triton's counts are), each replica that has served also waits on the collector between reports
(``next_report``, a long poll that costs the request path nothing): a statistics request wakes the waiting
replicas of its models and waits up to ``FRESH_TIMEOUT_S`` for their reports. A replica that goes away keeps
its counts: they are history; its requests in flight stop counting once it has missed three heartbeats.
A restarted collector has every live replica's totals back within a heartbeat; the history of replicas
that went away before it restarted is lost (it keeps no state of its own).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from deployments.statistics import HEARTBEAT_S, VersionStatistics, merged

#: A replica that has not reported for this long is gone: its requests in flight no longer count.
GONE_AFTER_S = 3 * HEARTBEAT_S
#: How long a statistics request waits for the reports it asked for (a replica that does not answer in
#: time is counted as it last reported).
FRESH_TIMEOUT_S = 1.0
#: Every replica that has served holds one long poll here, hence the high bound.
MAX_ONGOING = 100_000

Replica = tuple[str, str]  # (model, replica id)


# Every method is async: they run on the replica's event loop, never on Serve's thread pool, so the
# futures and dicts below are touched by one thread.
# A short graceful shutdown: the long polls would otherwise hold a stopping collector up to HEARTBEAT_S.
@serve.deployment(num_replicas=1, max_ongoing_requests=MAX_ONGOING, graceful_shutdown_timeout_s=1,
                  ray_actor_options={"num_cpus": 0})
class StatisticsCollector:
    def __init__(self):
        self._reports: dict[Replica, dict[int, VersionStatistics]] = {}
        self._in_flight: dict[Replica, tuple[int, float]] = {}  # -> (requests, when reported)
        self._waiting: dict[Replica, asyncio.Future] = {}  # replicas in next_report: set to ask for a report
        self._between: dict[Replica, float] = {}  # replicas reporting between two polls -> when they left one
        self._asked: dict[Replica, asyncio.Future] = {}  # replicas asked, until their report comes

    async def report(self, model: str, replica: str, stats: dict[int, VersionStatistics], in_flight: int = 0) -> None:
        self._reports[(model, replica)] = stats
        self._in_flight[(model, replica)] = (in_flight, time.monotonic())
        asked = self._asked.pop((model, replica), None)
        if asked is not None and not asked.done():
            asked.set_result(None)

    async def next_report(self, model: str, replica: str, timeout_s: float) -> None:
        """A replica's long poll: returns when a statistics request wants its report, or after
        ``timeout_s`` (its heartbeat); either way the replica then reports."""
        key, wake = (model, replica), asyncio.get_running_loop().create_future()
        self._between.pop(key, None)
        if key in self._asked:  # asked while it was reporting: its next report is wanted at once
            return
        self._waiting[key] = wake
        try:
            await asyncio.wait_for(wake, timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            if self._waiting.get(key) is wake:
                del self._waiting[key]
                self._between[key] = time.monotonic()

    async def _fresh(self, models: set[str]) -> None:
        """Ask the replicas of ``models`` to report now (those waiting, and those between two polls, whose
        report may have been taken before the latest requests), and wait (bounded) for their reports."""
        loop, now, asked = asyncio.get_running_loop(), time.monotonic(), []
        reporting = [key for key, left in self._between.items() if now - left < FRESH_TIMEOUT_S]
        for key in [*self._waiting, *reporting]:
            if key[0] in models:
                asked.append(self._asked.setdefault(key, loop.create_future()))
                wake = self._waiting.get(key)
                if wake is not None and not wake.done():
                    wake.set_result(None)
        if asked:
            await asyncio.wait(asked, timeout=FRESH_TIMEOUT_S)

    async def in_flight(self) -> dict[str, int]:
        """Requests each model's live replicas held (waiting for a batch or running) when they last reported."""
        now, totals = time.monotonic(), {}
        for (model, replica), (count, reported) in list(self._in_flight.items()):
            if now - reported > GONE_AFTER_S:
                del self._in_flight[(model, replica)]
                continue
            totals[model] = totals.get(model, 0) + count
        return totals

    async def merged(self) -> dict[str, dict[int, VersionStatistics]]:
        """Every model's statistics per version, summed over its replicas (``ric status`` reads these)."""
        found: dict[str, dict[int, list[VersionStatistics]]] = {}
        for (model, _), stats in self._reports.items():
            for version, report in stats.items():
                found.setdefault(model, {}).setdefault(version, []).append(report)
        return {model: {v: merged(r) for v, r in versions.items()} for model, versions in found.items()}

    async def model_stats(self, versions: dict[str, list[int] | None]) -> list[dict[str, Any]]:
        """Triton ``model_stats`` rows for the given models and versions (None: every version reported),
        zero where nothing ran yet; current, as each replica counts when asked."""
        await self._fresh(set(versions))
        rows = []
        for model, model_versions in sorted(versions.items()):
            reports = [stats for (name, _), stats in self._reports.items() if name == model]
            if model_versions is None:
                model_versions = sorted({version for report in reports for version in report})
            for version in model_versions:
                total = merged([r[version] for r in reports if version in r])
                rows.append(total.to_triton(model, version))
        return rows
