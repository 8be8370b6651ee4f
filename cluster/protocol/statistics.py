"""The StatisticsCollector deployment: one per application, it sums what every model replica reports.

Replicas send their cumulative per-version statistics shortly after serving requests, and every
``HEARTBEAT_S`` while idle; the collector keeps the latest report of each replica (so a lost or repeated
report changes nothing) and adds them up when the statistics endpoint asks. A replica that goes away keeps
its counts: they are history; its requests in flight stop counting once it has missed three heartbeats.
A restarted collector has every live replica's totals back within a heartbeat; the history of replicas
that went away before it restarted is lost (it keeps no state of its own).
"""

from __future__ import annotations

import time
from typing import Any

from ray import serve

from deployments.statistics import HEARTBEAT_S, VersionStatistics, merged

#: A replica that has not reported for this long is gone: its requests in flight no longer count.
GONE_AFTER_S = 3 * HEARTBEAT_S


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class StatisticsCollector:
    def __init__(self):
        self._reports: dict[tuple[str, str], dict[int, VersionStatistics]] = {}
        self._in_flight: dict[tuple[str, str], tuple[int, float]] = {}  # -> (requests, when reported)

    def report(self, model: str, replica: str, stats: dict[int, VersionStatistics], in_flight: int = 0) -> None:
        self._reports[(model, replica)] = stats
        self._in_flight[(model, replica)] = (in_flight, time.monotonic())

    def in_flight(self) -> dict[str, int]:
        """Requests each model's live replicas held (waiting for a batch or running) when they last reported."""
        now, totals = time.monotonic(), {}
        for (model, replica), (count, reported) in list(self._in_flight.items()):
            if now - reported > GONE_AFTER_S:
                del self._in_flight[(model, replica)]
                continue
            totals[model] = totals.get(model, 0) + count
        return totals

    def merged(self) -> dict[str, dict[int, VersionStatistics]]:
        """Every model's statistics per version, summed over its replicas (``ric status`` reads these)."""
        found: dict[str, dict[int, list[VersionStatistics]]] = {}
        for (model, _), stats in self._reports.items():
            for version, report in stats.items():
                found.setdefault(model, {}).setdefault(version, []).append(report)
        return {model: {v: merged(r) for v, r in versions.items()} for model, versions in found.items()}

    def model_stats(self, versions: dict[str, list[int] | None]) -> list[dict[str, Any]]:
        """Triton ``model_stats`` rows for the given models and versions (None: every version reported),
        zero where nothing ran yet."""
        rows = []
        for model, model_versions in sorted(versions.items()):
            reports = [stats for (name, _), stats in self._reports.items() if name == model]
            if model_versions is None:
                model_versions = sorted({version for report in reports for version in report})
            for version in model_versions:
                total = merged([r[version] for r in reports if version in r])
                rows.append(total.to_triton(model, version))
        return rows
