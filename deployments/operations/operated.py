"""What a served model does once it has answered a request (or failed to): log the payload, count its tensors
into the drift windows, send the shadow copy. One ``Operated`` per model and replica, called on its event
loop; no Ray here."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable, Iterator

from deployments.backends import Tensors
from deployments.config.model_config import ModelConfig
from deployments.errors import without_paths
from deployments.observability.statistics import ShadowStatistics, VersionStatistics
from deployments.operations.drift import Sample, Windows, read_profile
from deployments.operations.payloads import PayloadWriter, sink_for
from deployments.operations.shadow import ShadowCopies, shadowable

logger = logging.getLogger(__name__)


class Operated:
    """The payload log and the shadow copies of one model in one replica, with their counts."""

    def __init__(self, model: str, replica: str, destination: str, run: Callable[..., Awaitable[list]],
                 counted: Callable[[], None], folder: Callable[[], Path | None] = lambda: None):
        """``destination``: where payloads go (ServingLimits.payload_log; empty: nowhere); ``run(call)``: a
        BLS call's responses (the shadow copies'); ``counted()``: new counts to report; ``folder()``: the
        model's folder (where its drift reference is), None while no version is loaded."""
        self.model, self.replica, self.destination, self._folder = model, replica, destination, folder
        self._drift: dict[int, Windows] = {}  # version -> its windows, under the profile read last
        self._profile: tuple[tuple, dict] | None = None  # ((path, mtime, settings), profile)
        self._sample = Sample()  # the first requests' values, while the collector builds a reference of them
        self._learned: dict | None = None  # the reference the collector built from the first requests
        self._recheck_at = 0.0  # when to look at the reference file's modification time again
        self._quiet_until: dict[str, float] = {}  # what failed -> until when its errors are not logged again
        self._shadow_counts: dict[int, dict[str, ShadowStatistics]] = {}  # (event loop only)
        self.shadow = ShadowCopies(model, run, self._counts, counted)
        self.payloads: PayloadWriter | None = None  # made when a request is first logged
        self._refused = False

    def _counts(self, version: int, candidate: str) -> ShadowStatistics:
        return self._shadow_counts.setdefault(version, {}).setdefault(candidate, ShadowStatistics())

    def answered(self, config: ModelConfig, callers: tuple[str, ...], version: int, request_id: str,
                 arrived_s: float, started_ns: int, inputs: Tensors, outputs: list[str] | None,
                 parameters: dict | None, result: Tensors) -> None:
        """A request answered: its payload logged (if sampled), its copy sent to the shadow; not for a shadow
        copy itself."""
        if not shadowable(callers):
            return
        with self._never_failing("its payload log"):
            self._log(config, version, request_id, arrived_s, started_ns, inputs, result)
        if config.drift is not None:
            with self._never_failing("its drift monitoring"):
                windows = self._windows(config, version)
                if windows is not None:
                    windows.observe({**inputs, **result})
                elif config.drift.reference_requests:
                    self._sample.add({**inputs, **result}, config.drift.reference_requests)
        if config.shadow is not None:
            with self._never_failing("its shadow"):
                self.shadow.offer(config.shadow, version, inputs, outputs, parameters, result)

    def failed(self, config: ModelConfig, callers: tuple[str, ...], version: int, request_id: str,
               arrived_s: float, started_ns: int, inputs: Tensors, error: Exception) -> None:
        if shadowable(callers):
            with self._never_failing("its payload log"):
                self._log(config, version, request_id, arrived_s, started_ns, inputs, None, error)

    @contextmanager
    def _never_failing(self, what: str) -> Iterator[None]:
        """What is done beside a request never fails it: an error is logged (once a minute at most)."""
        try:
            yield
        except Exception as exc:
            if time.monotonic() >= self._quiet_until.get(what, 0.0):
                self._quiet_until[what] = time.monotonic() + 60.0
                logger.exception("model '%s': %s failed (the request was answered): %r", self.model, what, exc)

    def _log(self, config: ModelConfig, version: int, request_id: str, arrived_s: float, started_ns: int,
             inputs: Tensors, outputs: Tensors | None, error: Exception | None = None) -> None:
        if config.payload_log is None:
            return
        if self.payloads is None:
            if self._refused:
                return
            if not self.destination:
                logger.error("model '%s' sets payload_log, but the application has no payload log destination "
                             "(ric serve --payload-log, AppArgs.payload_log): nothing is logged", self.model)
                self._refused = True
                return
            try:
                sink = sink_for(self.destination)
            except ValueError as exc:
                logger.error("model '%s': payload log destination: %s; nothing is logged", self.model, exc)
                self._refused = True
                return
            self.payloads = PayloadWriter(self.model, self.replica, sink)
        self.payloads.offer(config.payload_log, version, request_id, arrived_s, time.perf_counter_ns() - started_ns,
                            inputs, outputs, error)

    def _windows(self, config: ModelConfig, version: int) -> Windows | None:
        """The version's drift windows under the model's reference profile (read again when its file or the
        config's drift block changes; a missing or broken file is logged once and nothing is counted)."""
        if config.drift.reference_requests:
            profile = self._learned if (self._learned or {}).get("reference_requests") == \
                config.drift.reference_requests else None
            key = ("first requests", config.drift)
            if profile is not None and (self._profile is None or self._profile[0] != key):
                self._profile, self._drift = (key, profile), {}
            return self._windows_of(profile, config, version)
        now = time.monotonic()
        if self._profile is not None and self._profile[0][2] is config.drift and now < self._recheck_at:
            return self._windows_of(self._profile[1], config, version)  # (the file looked at once a second)
        self._recheck_at = now + 1.0
        folder = self._folder()
        if folder is None:
            return None
        path = folder / config.drift.reference
        try:
            key = (str(path), path.stat().st_mtime_ns, config.drift)
        except OSError:
            key = (str(path), None, config.drift)
        if self._profile is None or self._profile[0] != key:
            try:
                profile = read_profile(path)
            except (OSError, ValueError) as exc:
                logger.error("model '%s': its drift reference %r cannot be read (%s): drift is not monitored",
                             self.model, config.drift.reference, without_paths(str(exc)))
                profile = None
            self._profile, self._drift = (key, profile), {}
        return self._windows_of(self._profile[1], config, version)

    def _windows_of(self, profile: dict | None, config: ModelConfig, version: int) -> Windows | None:
        if profile is None:
            return None
        if version not in self._drift:
            self._drift[version] = Windows(profile, config.drift.window_s, config.drift.threshold)
        return self._drift[version]

    def drift_sample(self, config: ModelConfig) -> Sample | None:
        """The first requests' values for the collector, while the model's drift reference is to be taken
        from them and this copy has not got it yet (a copy that starts later sends an empty one, to get it)."""
        drift = config.drift
        if drift is None or not drift.reference_requests or (self._learned or {}).get(
                "reference_requests") == drift.reference_requests:
            return None
        self._sample.wanted = drift.reference_requests
        return self._sample

    def adopt(self, answer: dict) -> None:
        """What the collector answered a report: the reference built from the first requests, once it is."""
        if answer.get("drift_profile") is not None:
            self._learned, self._sample = answer["drift_profile"], Sample()

    def merge_into(self, stats: dict[int, VersionStatistics]) -> None:
        """Add the shadow's and the payload log's counts to a statistics snapshot (on the event loop)."""
        for version, candidates in self._shadow_counts.items():
            for candidate, counts in candidates.items():
                stats.setdefault(version, VersionStatistics()).shadow.setdefault(
                    candidate, ShadowStatistics()).merge(counts)
        for version, counts in (self.payloads.counts() if self.payloads is not None else {}).items():
            stats.setdefault(version, VersionStatistics()).payloads.merge(counts)
        for version, windows in self._drift.items():
            stats.setdefault(version, VersionStatistics()).drift = windows.window()

    def stop(self) -> None:
        self.shadow.stop()
        if self.payloads is not None:
            self.payloads.stop()
