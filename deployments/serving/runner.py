"""A model's versions inside one replica: load them, check requests, run batches. No Ray here.

The Serve deployment (:mod:`deployments.serving.model`) wraps a ModelRunner with dynamic batching; benchmarks
and unit tests use a ModelRunner directly as the in-process baseline.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol


from deployments.scheduling import batching
from deployments.backends import (Backend, RequestInfo, Tensors, backend_class, cancellation, keep_parameters,
                                  resolve_backend)
from deployments.backends.process import ProcessBackend
from deployments.config.model_config import ModelConfig
from deployments.config.operations import same_model, with_operations
from deployments.errors import (ErrorCode, InferenceError, no_available_versions, unknown_model,
                                version_not_ready, without_paths)
from deployments.observability.custom_metrics import REGISTRY, merge
from deployments.observability.statistics import VersionStatistics
from deployments.config.validation import from_backend_shapes, to_backend_shapes, validate_inputs, validate_outputs
from deployments.serving.labels import LabelFiles
from deployments.serving.pending import Pending, VersionState, record_batch
from deployments.serving.warmup import run_warmup

logger = logging.getLogger(__name__)


class VersionSource(Protocol):
    """Where a replica finds a model's versions (a model store)."""

    def versions(self, model: str) -> list[int]: ...

    def fetch(self, model: str, version: int) -> Path: ...


class ModelRunner:
    """Loads the versions a model's version policy selects and runs checked requests on them."""

    def __init__(self, config: ModelConfig, source: VersionSource, device: str = "cpu", isolated: bool = False,
                 calls=None):
        """``isolated``: a Python model's versions run in stub processes of their own (ProcessBackend), so
        that its code cannot take this process down; ``calls``: where its BLS requests go
        (deployments/backends/bls.py; None: a model here cannot call others)."""
        self.base_config = config
        self.config = config
        self.source = source
        self.device = device
        self.isolated = isolated
        self.calls = calls
        self.backends: dict[int, Backend] = {}
        self.states: dict[int, VersionState] = {}
        self.stats: dict[int, VersionStatistics] = {}
        self.reason = ""
        self._in_flight: dict[int, int] = {}  # id(backend) -> requests prepared and not yet executed
        self._running: dict[int, int] = {}  # version -> requests in the backend call now (executor thread)
        self._retired: list[Backend] = []  # swapped out, unloaded once nothing in flight uses them
        self._labels = LabelFiles()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.base_config.name

    def load(self) -> None:
        """Load every version the policy selects; a version that fails is recorded with its reason."""
        try:
            available = self.source.versions(self.name)
        except Exception as exc:  # the store could not be listed
            self.reason = f"cannot list versions: {exc}"
            return
        # As Triton: the config's model_warmup samples run before the first load reports ready (live updates
        # always warm up, with one request of zeros where no samples are configured).
        configured = bool((self.base_config.model_extra or {}).get("model_warmup"))
        self.update(self.base_config.version_policy.select(available), warm_up=configured)

    def update(self, selected: list[int], warm_up: bool = True, config: ModelConfig | None = None) -> None:
        """Serve exactly ``selected``: load (and warm up) new versions beside the served ones, swap them in
        with one assignment, retire the rest. Versions that fail keep their reason; the old ones serve on.
        With a new ``config`` every selected version is loaded again under it.

        Call from one thread at a time (the replica's loader thread); requests keep being served meanwhile.
        """
        reload = config is not None and not same_model(config, self.base_config)
        if config is not None:
            self.base_config = config  # (an operations block alone changes without loading anything)
        serving: dict[int, Backend] = {}
        for version in sorted(selected):
            if version in self.backends and not reload:
                serving[version] = self.backends[version]
                continue
            try:
                backend = self._load_version(version)
                if warm_up:
                    run_warmup(backend)
            except Exception as exc:
                logger.warning("model '%s' version %d failed to load: %s", self.name, version, exc)
                self.states[version] = VersionState("UNAVAILABLE", f"failed to load: {without_paths(str(exc))}")
                continue
            serving[version] = backend
            self.states[version] = VersionState("READY")
            self.stats.setdefault(version, VersionStatistics())
        if not serving and self.backends:
            return  # none of the selected versions loaded: the served ones serve on, the index says why
        for backend in serving.values():
            backend.config = with_operations(backend.config, self.base_config)
        retired = [backend for version, backend in self.backends.items() if version not in serving]
        self.states = {v: s for v, s in self.states.items() if v in selected}
        self.backends = serving  # the swap
        if serving:
            self.config, self.reason = serving[max(serving)].config, ""
        else:
            self.reason = ("; ".join(f"version {v}: {s.reason}" for v, s in self.states.items())
                           or "no version folder matches the version policy")
        with self._lock:
            self._retired += retired
        self._unload_idle()

    def unload_all(self, reason: str) -> None:
        """Stop serving every version (the repository API's unload); memory is freed once idle."""
        retired = list(self.backends.values())
        self.backends, self.states, self.reason = {}, {}, reason
        with self._lock:
            self._retired += retired
        self._unload_idle()

    def abort_isolated(self, why: str) -> bool:
        """End the stub processes of this model's versions (a wedged batch in one); whether any was ended."""
        return any([b.abort(why) for b in list(self.backends.values()) if isinstance(b, ProcessBackend)])

    def _unload_idle(self) -> None:
        with self._lock:
            idle = [b for b in self._retired if not self._in_flight.get(id(b))]
            self._retired = [b for b in self._retired if b not in idle]
        for backend in idle:
            backend.unload()

    def _load_version(self, version: int) -> Backend:
        path = self.source.fetch(self.name, version)
        name = resolve_backend(self.base_config, [path])
        if self.isolated and name == "python" and not self.base_config.decoupled:
            backend = ProcessBackend(name, self.base_config, path, self.device)
        else:
            backend = backend_class(name)(self.base_config, path, self.device)
        backend.calls = self.calls
        backend.load()
        backend.config.check(f"{self.name}/config")
        return backend

    @property
    def ready(self) -> bool:
        return bool(self.backends)

    def version_for(self, version: int | str | None, backends: dict[int, Backend] | None = None,
                    parameters: dict | None = None, sequence: int | str = 0) -> int:
        """The version a request asks for among ``backends`` (default: the loaded ones); when it names none,
        the model's traffic split chooses (by the correlation id of its ``sequence``, which stays on one
        version, else by the request's sticky parameter in ``parameters``), else the newest."""
        backends = self.backends if backends is None else backends
        if not backends:
            raise no_available_versions(self.name, self.reason)
        if version in (None, ""):
            traffic = self.base_config.traffic
            if traffic is None:
                return max(backends)
            key = f"sequence {sequence}" if sequence not in (0, "") else None  # (a sequence keeps one version)
            if key is None and traffic.sticky_by:
                key = (parameters or {}).get(traffic.sticky_by)
            return traffic.choose(backends, None if key is None else str(key)) or max(backends)
        try:
            number = int(version)
        except (TypeError, ValueError):
            raise unknown_model(self.name, version) from None
        if number not in backends:
            state = self.states.get(number)
            if state is not None:
                raise version_not_ready(self.name, number, state.reason)
            raise unknown_model(self.name, number, f"it serves {sorted(backends)}")
        return number

    def prepare(self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
                parameters: dict | None = None, info: RequestInfo = RequestInfo()) -> Pending:
        """Check a request against its version's config; the result may join a batch. ``parameters`` (the
        request's own) and ``info`` (its id, sequence and BLS callers) reach backends that take whole
        requests (Triton's Python backend)."""
        arrived = time.perf_counter_ns()
        with self._lock:  # chosen and counted at once: an update cannot retire and unload it in between
            backends = self.backends
            number = self.version_for(version, backends, parameters, info.correlation_id)
            backend = backends[number]
            self._in_flight[id(backend)] = self._in_flight.get(id(backend), 0) + 1
        config = backend.config
        try:
            rows = validate_inputs(config, inputs)
            requested = validate_outputs(config, outputs)
            backend_inputs = to_backend_shapes(config, inputs)
        except InferenceError:
            self._release([backend])
            self.stats[number].record_request(time.perf_counter_ns() - arrived, ok=False, reason="OTHER")
            raise
        timeout = (parameters or {}).get("timeout")
        info = dataclasses.replace(info, parameters=dict(parameters or {}), outputs=tuple(requested or ()) or None,
                                   timeout_us=timeout if isinstance(timeout, int) and timeout > 0 else 0,
                                   token=cancellation.begin())
        return Pending(number, backend, backend_inputs, requested, rows, arrived, time.perf_counter_ns(), info)

    def execute(self, pending: list[Pending]) -> list[Tensors | InferenceError]:
        """Run checked requests in as few backend calls as their signatures allow.

        A failing backend call fails only the requests in it, each with an error naming the model.
        """
        calls, outputs = self._calls(pending), None
        while True:
            try:
                backend, inputs, infos = calls.send(outputs)
            except StopIteration as done:
                return done.value
            try:
                outputs = backend.execute(inputs, infos)
            except Exception as exc:
                outputs = exc

    async def execute_async(self, pending: list[Pending]) -> list[Tensors | InferenceError]:
        """``execute`` on the event loop, for requests whose versions run in stub processes (``runs_apart``):
        each backend call awaited, no thread in between."""
        calls, outputs = self._calls(pending), None
        while True:
            try:
                backend, inputs, infos = calls.send(outputs)
            except StopIteration as done:
                return done.value
            try:
                outputs = await backend.execute_async(inputs, infos)
            except Exception as exc:
                outputs = exc
            except BaseException:  # cancelled: the generator's finally gives the versions back
                calls.close()
                raise

    @property
    def apart(self) -> bool:
        """Whether this model's versions run in stub processes (their batches on the event loop)."""
        return any(isinstance(backend, ProcessBackend) for backend in list(self.backends.values()))

    @staticmethod
    def runs_apart(pending: list[Pending]) -> bool:
        """Whether every request's version runs in a stub process (so its batch may run on the event loop)."""
        return all(isinstance(p.backend, ProcessBackend) for p in pending)

    def _calls(self, pending: list[Pending]):
        """``execute``'s work as a generator: yields each backend call (backend, inputs, infos) and is sent
        its outputs, or the exception it raised; returns the results in the requests' order."""
        results: list[Tensors | InferenceError] = [None] * len(pending)  # type: ignore[list-item]
        for p in pending:
            self._running[p.version] = self._running.get(p.version, 0) + 1
        keys = [(p.version, batching.signature(p.inputs)) for p in pending]
        try:
            for group in batching.plan_batches(keys, [p.rows for p in pending], self.config.max_batch_size or 1):
                start = time.perf_counter_ns()
                outputs = yield pending[group[0]].backend, [pending[i].inputs for i in group], \
                    [pending[i].info for i in group]
                self._results(pending, group, outputs, results, start)
        finally:  # a batch given up midway (the replica stopping) still gives its versions back
            self._done(pending)
            self._running.clear()
        return results

    def _results(self, pending: list[Pending], group: list[int], outputs: list | Exception, results: list,
                 start: int) -> None:
        """One backend call's outputs (or the exception it raised) into ``results``, shaped as the clients
        asked; counted in the version's statistics."""
        version, backend = pending[group[0]].version, pending[group[0]].backend
        if isinstance(outputs, InferenceError):  # the backend's own words (a stub process that exited)
            outputs = [outputs] * len(group)
        elif isinstance(outputs, Exception):
            logger.error("model '%s' version %d failed", self.name, version, exc_info=outputs)
            # The exception's text stays in the log: it may hold paths, data or code of the server.
            outputs = [InferenceError(ErrorCode.INTERNAL, f"model '{self.name}' version {version} failed: "
                                      f"{type(outputs).__name__} (the server log has the details)")] * len(group)
        computed = time.perf_counter_ns()
        for i, output in zip(group, outputs):
            if isinstance(output, Exception):
                results[i] = output if isinstance(output, InferenceError) else InferenceError.from_exception(output)
                continue
            shaped, wanted = from_backend_shapes(backend.config, output), pending[i].outputs
            results[i] = keep_parameters(output, shaped if wanted is None else {n: shaped[n] for n in wanted})
        record_batch(self.stats[version], [pending[i] for i in group], [results[i] for i in group], start, computed)

    def execute_stream(self, pending: Pending, emit: Callable[[Tensors | Exception | None, bool], None]) -> None:
        """Run one checked request of a decoupled model: ``emit(outputs, final)`` per response, its outputs
        in the client's shapes, those asked for; the request counts once in the statistics, for the time
        until the model returned (a failure emits the error as the final response)."""
        backend, version = pending.backend, pending.version
        failed: list[Exception] = []

        def each(outputs: Tensors | Exception | None, final: bool) -> None:
            if isinstance(outputs, dict):
                shaped = from_backend_shapes(backend.config, outputs)
                if pending.outputs is not None:
                    shaped = {name: shaped[name] for name in pending.outputs if name in shaped}
                outputs = keep_parameters(outputs, shaped)
            elif isinstance(outputs, Exception):
                failed.append(outputs)
            emit(outputs, final)

        start = time.perf_counter_ns()
        self._running[version] = 1
        try:
            backend.stream(pending.inputs, pending.info, each)
        except Exception as exc:
            logger.exception("model '%s' version %d failed", self.name, version)
            each(InferenceError(ErrorCode.INTERNAL, f"model '{self.name}' version {version} failed: "
                                f"{type(exc).__name__} (the server log has the details)"), True)
        finally:
            record_batch(self.stats[version], [pending], [failed[0] if failed else None], start,
                         time.perf_counter_ns())
            self._done([pending])
            self._running.clear()

    def release(self, pending: list[Pending], reason: str) -> None:
        """These checked requests will not run (their queue timeout passed, ``reason`` REJECTED; their
        caller gave up, CANCELED; a bad parameter, OTHER): count them as failed and give their versions back."""
        now = time.perf_counter_ns()
        for request in pending:
            self.stats[request.version].record_request(now - request.arrived_ns, ok=False, reason=reason)
        self._done(pending)

    def statistics_snapshot(self) -> dict[int, VersionStatistics]:
        """A copy of the statistics per version, each with the requests now waiting for a backend call
        (checked, not yet running). Call on the thread that executes batches (no batch runs meanwhile)."""
        snapshot = copy.deepcopy(self.stats)
        with self._lock:
            for version, backend in self.backends.items():
                waiting = self._in_flight.get(id(backend), 0) - self._running.get(version, 0)
                snapshot.setdefault(version, VersionStatistics()).pending = max(0, waiting)
        return snapshot

    def _done(self, pending: list[Pending]) -> None:
        """These requests are done: no more marks of cancellation for them, their versions given back."""
        for request in pending:
            cancellation.end(request.info.token)
        self._release([request.backend for request in pending])

    def _release(self, backends: list[Backend]) -> None:
        """The requests on these backends are done; unload those retired and no longer in use."""
        with self._lock:
            for backend in backends:
                self._in_flight[id(backend)] -= 1
        if self._retired:
            self._unload_idle()

    def custom_metrics(self) -> dict:
        """The metric families the model made itself: its stub processes' (one per version), summed, or this
        process's (where its versions share one registry)."""
        backends = list(self.backends.values())
        stubs = [b.custom_metrics() for b in backends if isinstance(b, ProcessBackend)]
        return merge(stubs + [REGISTRY.snapshot(self.name)] * (len(stubs) < len(backends)))

    def folder(self) -> Path | None:
        """The model's folder (the newest version's parent: its label and reference files), None unloaded."""
        backends = self.backends
        return backends[max(backends)].version_dir.parent if backends else None

    def labels(self, output: str) -> list[str] | None:
        """An output's labels from its ``label_filename`` in the model's folder (None without)."""
        return self._labels.labels(self.config, self.folder(), output)

    def metadata(self) -> dict[str, Any]:
        """The v2 model metadata: name, versions, platform, inputs and outputs."""
        lead = [-1] if self.config.batching else []
        return {
            "name": self.name,
            "versions": [str(v) for v in sorted(self.backends)],
            "platform": self.config.platform or self.config.backend_name,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": lead + t.dims} for t in self.config.input],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": lead + t.dims} for t in self.config.output],
        }

    def index(self) -> list[dict[str, str]]:
        """Repository index rows for this model, one per version it tried."""
        if not self.states:
            return [{"name": self.name, "version": "", "state": "UNAVAILABLE", "reason": self.reason}]
        return [{"name": self.name, "version": str(v), "state": s.state, "reason": s.reason}
                for v, s in sorted(self.states.items())]

    def unload(self) -> None:
        for backend in self.backends.values():
            backend.unload()
        self.backends.clear()
