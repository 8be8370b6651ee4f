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

The same sums are Triton's Prometheus metrics (``prometheus``, ``cluster/protocol/metrics.py``), with each
node's latest host sample (CPU, memory, GPUs) that the reports carry; the collector also copies them into
Ray's metrics every ``PUBLISH_S`` (``cluster/protocol/ray_metrics.py``).

It also keeps the application's log and trace settings and writes the spans of sampled requests
(``cluster/protocol/app_settings.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from ray import serve

from deployments.private_files import UnsafeFolder, private_folder
from cluster.protocol import metrics
from cluster.protocol.app_settings import AppSettings
from cluster.protocol.ray_metrics import PUBLISH_S, RayMetrics
from cluster.repository.control_state import DRIFT_PREFIX, SavedState
from deployments.observability import custom_metrics
from deployments.observability.host_usage import HostUsage
from deployments.observability.statistics import HEARTBEAT_S, VersionStatistics, merged
from deployments.operations.drift import ReferenceSamples, Sample

#: Where trace files go unless the application says otherwise (AppArgs.trace_dir).
DEFAULT_TRACE_DIR = "/tmp/ric-traces"
#: A replica that has not reported for this long is gone: its requests in flight no longer count.
GONE_AFTER_S = 3 * HEARTBEAT_S
#: How long a statistics request waits for the reports it asked for (a replica that does not answer in
#: time is counted as it last reported).
FRESH_TIMEOUT_S = 1.0
#: Every replica that has served holds one long poll here, hence the high bound.
MAX_ONGOING = 100_000

Replica = tuple[str, str]  # (model, replica id)

logger = logging.getLogger(__name__)


# Every method is async: they run on the replica's event loop, never on Serve's thread pool, so the
# futures and dicts below are touched by one thread.
# A short graceful shutdown: the long polls would otherwise hold a stopping collector up to HEARTBEAT_S.
@serve.deployment(num_replicas=1, max_ongoing_requests=MAX_ONGOING, graceful_shutdown_timeout_s=1,
                  ray_actor_options={"num_cpus": 0})
class StatisticsCollector:
    def __init__(self, trace_dir: str = DEFAULT_TRACE_DIR):
        """``trace_dir``: the folder trace files go to, on this replica's node."""
        self._trace_dir = trace_dir
        try:  # made at start, so that no other local user can make it first and swap links into it
            private_folder(trace_dir)
        except UnsafeFolder as error:
            logger.warning("traces cannot be written: the trace folder %s", error)
        self._reports: dict[Replica, dict[int, VersionStatistics]] = {}
        self._in_flight: dict[Replica, tuple[int, float]] = {}  # -> (requests, when reported)
        self._waiting: dict[Replica, asyncio.Future] = {}  # replicas in next_report: set to ask for a report
        self._between: dict[Replica, float] = {}  # replicas reporting between two polls -> when they left one
        self._asked: dict[Replica, asyncio.Future] = {}  # replicas asked, until their report comes
        self._hosts: dict[str, tuple[HostUsage, float]] = {}  # node -> (latest sample, when reported)
        self._custom: dict[Replica, dict] = {}  # the models' own metric families, as each replica last sent them
        self._publisher: asyncio.Task | None = None  # copies the metrics into Ray's, from the first report
        self._settings: AppSettings | None = None  # made when first asked for (it reads Ray's KV store)
        self._drifting: set[tuple[str, int, str]] = set()  # features over their drift threshold, as last seen
        self._samples = ReferenceSamples()  # the replicas' first requests, for drift references taken of them
        self._references: dict[str, dict] | None = None  # model -> reference built (read from Ray's KV at first)
        self._saved_references: SavedState | None = None

    async def report(self, model: str, replica: str, stats: dict[int, VersionStatistics], in_flight: int = 0,
                     host: HostUsage | None = None, custom: dict | None = None, drift_sample: Sample | None = None
                     ) -> dict | None:
        """A replica's report; the answer carries the model's drift reference taken from its first requests
        (``drift_sample``: the replica's share of them, sent until it has the reference) once it is built."""
        self._reports[(model, replica)] = stats
        if custom:
            self._custom[(model, replica)] = custom
        else:  # (none, or none left: an unloaded model's families go)
            self._custom.pop((model, replica), None)
        self._in_flight[(model, replica)] = (in_flight, time.monotonic())
        if host is not None:
            self._hosts[host.node] = (host, time.monotonic())
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(self._publish())
        asked = self._asked.pop((model, replica), None)
        if asked is not None and not asked.done():
            asked.set_result(None)
        if drift_sample is not None:
            return {"drift_profile": await self._drift_reference(model, replica, drift_sample)}
        return None

    async def _drift_reference(self, model: str, replica: str, sample: Sample) -> dict | None:
        """The model's reference from its first ``sample.wanted`` requests: built once every replica's samples
        hold them, kept in Ray's KV store (a restarted collector hands out the same one)."""
        if self._references is None:
            self._saved_references = SavedState(serve.get_replica_context().app_name, DRIFT_PREFIX)
            self._references = await asyncio.to_thread(self._saved_references.read)
        profile = self._references.get(model)
        if profile is not None and profile.get("reference_requests") == sample.wanted:
            return profile
        self._samples.add(model, replica, sample)
        profile = self._samples.profile(model, sample.wanted)
        if profile is not None:
            self._references[model] = profile
            await asyncio.to_thread(self._saved_references.write, self._references)
            logger.info("model '%s': drift reference taken from its first %d requests", model, sample.wanted)
        return profile

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
        return self._live_totals(lambda count: count)

    def _live_totals(self, value) -> dict[str, int]:
        """Per model, the sum of ``value(in_flight)`` over its live replicas (forgetting those gone)."""
        now, totals = time.monotonic(), {}
        for (model, replica), (count, reported) in list(self._in_flight.items()):
            if now - reported > GONE_AFTER_S:
                del self._in_flight[(model, replica)]
                continue
            totals[model] = totals.get(model, 0) + value(count)
        return totals

    def _families(self, with_custom: bool = True) -> list[metrics.Family]:
        """The server's families, and the models' own (not copied into Ray's: their label sets may vary)."""
        now = time.monotonic()
        for node, (_, reported) in list(self._hosts.items()):
            if now - reported > GONE_AFTER_S:
                del self._hosts[node]
        replicas = self._live_totals(lambda _: 1)  # (first: it forgets the replicas gone)
        # A replica gone keeps its counts (history), not its gauges (a level no one holds any more).
        live = {key for key in self._custom if key in self._in_flight}
        custom = custom_metrics.merge([{name: family for name, family in snapshot.items()
                                        if key in live or family.kind != custom_metrics.GAUGE}
                                       for key, snapshot in self._custom.items()])
        return (metrics.families(self._merged(), [host for host, _ in self._hosts.values()], replicas)
                + (metrics.custom_families(custom) if with_custom else []))

    async def prometheus(self) -> bytes:
        """Triton's metrics for the whole application, in Prometheus's text format (``/metrics``); current,
        as Triton's counters are: every replica is asked for its report first (a scrape waits at most
        FRESH_TIMEOUT_S for them, as a statistics request does)."""
        await self._fresh({model for model, _ in [*self._reports, *self._waiting]})  # (a first report too)
        return metrics.exposition(self._families())

    # The application's log and trace settings, and the spans of sampled requests (app_settings.py).
    async def log_settings(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._app_settings().log_settings(changes)

    async def trace_settings(self, model: str | None = None, changes: dict[str, Any] | None = None
                             ) -> dict[str, Any]:
        return await self._app_settings().trace_settings(model, changes)

    async def watch_settings(self, generation: int, timeout_s: float) -> tuple[int, dict[str, Any]]:
        """A replica process's long poll: the settings once they differ from ``generation`` (at once for a
        new watcher, or one that watched a collector before a restart), else after ``timeout_s``."""
        return await self._app_settings().watch(generation, timeout_s)

    async def spans(self, rows: list[dict[str, Any]]) -> None:
        await self._app_settings().spans(rows)

    def _app_settings(self) -> AppSettings:
        if self._settings is None:
            self._settings = AppSettings(serve.get_replica_context().app_name, self._trace_dir)
        return self._settings

    async def _publish(self) -> None:
        ray_copies = RayMetrics()
        while True:
            try:
                ray_copies.publish(self._families(with_custom=False))
            except Exception as exc:  # Ray's metrics are a copy: never let them stop the collector
                logger.warning("publishing metrics to Ray failed: %r", exc)
            self._warn_of_drift()
            await asyncio.sleep(PUBLISH_S)

    def _warn_of_drift(self) -> None:
        """Log a warning when a feature's PSI over its window passes its threshold (once, until it is back)."""
        drifting = set()
        for model, versions in self._merged().items():
            for version, stats in versions.items():
                for key, window in stats.drift.items():
                    scores = window.scores()
                    if scores is not None and scores["psi"] > window.threshold:
                        drifting.add((model, version, key))
                        if (model, version, key) not in self._drifting:
                            logger.warning("model '%s' version %s: %s has drifted from its reference: PSI %.3f over "
                                           "%d values (threshold %g)", model, version, key, scores["psi"],
                                           window.count, window.threshold)
        self._drifting = drifting

    async def merged(self) -> dict[str, dict[int, VersionStatistics]]:
        """Every model's statistics per version, summed over its replicas (``ric status`` reads these)."""
        return self._merged()

    def _merged(self) -> dict[str, dict[int, VersionStatistics]]:
        found: dict[str, dict[int, list[VersionStatistics]]] = {}
        for key, stats in self._reports.items():
            for version, report in stats.items():
                if (report.pending or report.drift) and key not in self._in_flight:
                    report = dataclasses.replace(report, pending=0, drift={})  # gone: its history counts, not
                    # its queue or its window
                found.setdefault(key[0], {}).setdefault(version, []).append(report)
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
