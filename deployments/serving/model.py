"""ModelService serves one model with dynamic batching; the Model deployment (one Serve deployment per
model, named after it) runs one per replica, and an Ingress that colocates the model runs one too.

Requests are checked before they join a batch (a bad one fails alone); the dynamic batcher collects them
while the model is busy, and for up to ``max_queue_delay_microseconds`` when it is not, counting rows (not
requests) against the batch size; the batch runs on one executor thread so the replica keeps accepting
requests meanwhile, or, for a Python model in stub processes, on the event loop itself (the stub does the
work; the batch costs two messages and no thread hand-off).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Awaitable, Callable

import ray
from ray import serve

from deployments.observability import settings_follower, tracing
from deployments.backends import RequestInfo, Tensors, keep_parameters
from deployments.scheduling.batching import DynamicBatcher
from deployments.config.model_config import ModelConfig
from deployments.errors import decoupled_over_unary, invalid, unavailable
from deployments.serving.bls import SEQUENCE_END, SEQUENCE_START, ApplicationModels, ModelCalls, refuse_cycle
from deployments.serving.follow import follow
from deployments.serving.queued import QueuedRequests
from deployments.serving.pending import Pending
from deployments.serving.runner import ModelRunner, VersionSource
from deployments.scheduling.limits import ServingLimits, batch_limits, max_queued, queue_timeout_ns
from deployments.scheduling.response_cache import ResponseCache, request_key
from deployments.scheduling.sequences import Sequences, model_parameters, sequence_step
from deployments.serving.served import ServedModel
from deployments.observability.statistics import StatisticsReporter, VersionStatistics
from deployments.operations.operated import Operated
from deployments.operations.shadow import shadowable

logger = logging.getLogger(__name__)

class ModelService(ServedModel):
    """Serves every loaded version of one model: checks, dynamic batching, statistics, version updates; in a
    Model replica (below), or inside an Ingress replica that colocates the model."""

    def __init__(self, config: ModelConfig, source: VersionSource, statistics: Any = None, sync: Any = None,
                 limits: ServingLimits = ServingLimits(), isolated: bool = False,
                 handles: Callable[[str], Awaitable[Any]] | None = None, control=None):
        """``statistics`` and ``sync`` are the handles of the application's StatisticsCollector and
        ModelStoreSync (either may be None); ``limits`` the application's defaults where the model's config
        sets none; ``isolated``: a Python model runs in stub processes (ModelRunner); ``handles(model)``:
        the handles its BLS calls use (default: the application's deployments), ``control`` their loads and
        unloads (bls.ModelCalls). Call it with an event loop running (it starts the follower)."""
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self._limits = limits
        calls = ModelCalls(handles or ApplicationModels().handle, self.execution_timeout_s, asyncio.get_running_loop(),
                           control, lambda: self._tracer)
        self.runner = ModelRunner(config, source, device, isolated, calls)
        self.runner.load()
        self._queued = QueuedRequests(self.runner)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ric-{config.name}")
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ric-load-{config.name}")
        replica = serve.get_replica_context().replica_id.unique_id
        self._reporter = StatisticsReporter(statistics, config.name, replica, self._snapshot,
                                            ray.util.get_node_ip_address(), self.runner.custom_metrics,
                                            lambda: self._operated.drift_sample(self.runner.base_config),
                                            lambda answer: self._operated.adopt(answer))
        self._batcher: DynamicBatcher | None = None
        self._sequences: Sequences | None = None
        self._cache: ResponseCache | None = None
        self._cached: dict[int, VersionStatistics] = {}  # the cache's counts per version (event loop only)
        # The payload log and the shadow copies (deployments/operations).
        self._operated = Operated(config.name, replica, limits.payload_log, calls.run, self._reporter.schedule,
                                  self.runner.folder)
        self.configure_batching()
        self._running_since: float | None = None  # when the batch on the executor started (monotonic)
        self._apart_turn = asyncio.Lock()  # batches for stub processes, on the event loop
        self.generation = 0  # the sync's last generation this copy has applied
        self._follower = asyncio.get_running_loop().create_task(follow(self, sync)) if sync is not None else None
        settings_follower.follow(statistics)
        self._tracer = tracing.tracer_for(statistics)

    def configure_batching(self) -> None:
        """Batch per the config of the versions now loaded (a version update may change it)."""
        config = self.runner.config
        limits = batch_limits(config) if self.runner.ready else None
        if limits is None:
            self._batcher = None
        elif self._batcher is None:
            self._batcher = DynamicBatcher(self._run_batch, *limits, expired=self._queued.expired,
                                          priority=self._queued.priority)
        else:
            self._batcher.max_rows, self._batcher.max_delay_s = limits
        if not config.caches_responses:
            self._cache = None
        elif self._cache is None:
            self._cache = ResponseCache(self._limits.response_cache_bytes)
        else:
            self._cache.clear()  # the versions or the config changed: earlier answers may no longer hold
        if config.sequence_batching is None:
            self._sequences = None
        elif self._sequences is None or self._sequences.batching != config.sequence_batching:
            self._sequences = Sequences(config)  # a new sequence config: the sequences held start over

    async def infer_versioned(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None, request_id: str = "",
        callers: tuple[str, ...] = (),
    ) -> tuple[int, Tensors]:
        """Like ``infer``, also returning the version that answered (for the protocol's model_version).
        A sampled request (``trace``) gets the spans of its stages here (a cache hit none); ``request_id``
        the client's id, ``callers`` the models whose BLS calls led here (deployments/serving/bls.py)."""
        if self.runner.config.decoupled:
            raise decoupled_over_unary(self.runner.name)
        refuse_cycle(self.runner.name, callers)
        self._refuse_when_full(version)
        info = RequestInfo(request_id=request_id, callers=tuple(callers), trace=trace)
        arrived_s, started = time.time(), time.perf_counter_ns()
        try:
            if self._cache is not None:
                answered, result = await self._infer_cached(inputs, outputs, version, parameters, trace, info)
            else:
                answered, result = await self._infer(inputs, outputs, version, parameters, trace, info)
        except Exception as exc:
            number = int(version) if str(version or "").isdigit() else max(self.runner.backends, default=0)
            self._operated.failed(self.runner.base_config, callers, number, request_id, arrived_s, started, inputs,
                                  exc)
            raise
        self._operated.answered(self.runner.base_config, callers, answered, request_id, arrived_s, started, inputs,
                                outputs, parameters, result)
        return answered, result

    def _refuse_when_full(self, version: int | str | None) -> None:
        """Over the queue limit a request answers UNAVAILABLE at once, counted as rejected (Triton's full
        queue)."""
        if self._reporter.in_flight < self.queue_limit():
            return
        number = self.runner.version_for(version)
        self.runner.stats.setdefault(number, VersionStatistics()).record_request(0, ok=False, reason="REJECTED")
        self._reporter.schedule()
        raise unavailable(f"model '{self.runner.name}' holds {self._reporter.in_flight} requests, its queue "
                          "limit; retry later")

    async def _infer(self, inputs: Tensors, outputs: list[str] | None, version: int | str | None,
                     parameters: dict | None, trace: dict[str, str] | None = None,
                     info: RequestInfo = RequestInfo()) -> tuple[int, Tensors]:
        self._reporter.in_flight += 1
        try:
            if self._sequences is None:
                pending, result = await self._run(inputs, outputs, version, parameters, info)
            else:  # the request waits for its turn in its sequence, then runs with its control tensors
                sequences, step = self._sequences, sequence_step(self.runner.name, parameters)
                info = dataclasses.replace(info, correlation_id=step.correlation_id,
                                           flags=SEQUENCE_START * step.start | SEQUENCE_END * step.end)
                async with sequences.turn(step) as sequence:
                    pending, result = await self._run(inputs, outputs, version, model_parameters(parameters), info,
                                                      lambda rows: sequences.controls(step, rows, sequence),
                                                      sequences.state_outputs)
                    if not isinstance(result, Exception):
                        result = keep_parameters(result, sequences.keep_state(sequence, result))
        finally:
            self._reporter.in_flight -= 1
            self._reporter.schedule()
        if trace is not None and self._tracer is not None:
            self._tracer.stages(trace, self.runner.name, pending.version, {
                "arrived": pending.arrived_ns, "queued": pending.queued_ns, "started": pending.started_ns,
                "computed": pending.computed_ns, "done": pending.done_ns})
        if isinstance(result, Exception):
            raise result
        return pending.version, result

    async def _infer_cached(self, inputs: Tensors, outputs: list[str] | None, version: int | str | None,
                            parameters: dict | None, trace: dict[str, str] | None, info: RequestInfo
                            ) -> tuple[int, Tensors]:
        """Answer from the response cache, or run the request and keep its answer."""
        started = time.perf_counter_ns()
        number = self.runner.version_for(version, parameters=parameters)
        key = request_key(number, inputs, outputs, parameters)
        counts = self._cached.setdefault(number, VersionStatistics())
        answer = self._cache.get(key)
        if answer is not None:
            took = time.perf_counter_ns() - started
            counts.cache_hit.add(took)
            counts.record_request(took)
            counts.inference_count += next(iter(inputs.values())).shape[0] if self.runner.config.batching else 1
            self._reporter.schedule()
            return number, answer
        looked_up = time.perf_counter_ns() - started
        cache = self._cache  # (a version update meanwhile replaces its contents, not the object)
        answered, result = await self._infer(inputs, outputs, number, parameters, trace, info)
        inserted = time.perf_counter_ns()
        if cache is self._cache and answered == number:
            cache.put(key, result)
        counts.cache_miss.add(looked_up + time.perf_counter_ns() - inserted)
        return answered, result

    async def infer_stream(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None, request_id: str = "",
        callers: tuple[str, ...] = (),
    ) -> AsyncIterator[tuple[int, Tensors]]:
        """Every response to one request, as (version, outputs): a decoupled model's zero or more, as the
        model sends them; any other model's one. An error response raises, after the responses before it.
        (A decoupled model's request has no stage spans: only the ingress's span traces it.)"""
        if not self.runner.config.decoupled:
            yield await self.infer_versioned(inputs, outputs, version, parameters, trace, request_id, callers)
            return
        refuse_cycle(self.runner.name, callers)
        self._refuse_when_full(version)
        loop = asyncio.get_running_loop()
        responses: asyncio.Queue = asyncio.Queue()
        self._reporter.in_flight += 1
        pending = None
        try:
            pending = self.runner.prepare(inputs, outputs, version, parameters,
                                          RequestInfo(request_id=request_id, callers=tuple(callers), trace=trace))
            emit = lambda out, final: loop.call_soon_threadsafe(responses.put_nowait, (out, final))  # noqa: E731
            # Shielded: a client that goes away leaves the model to finish (its responses are dropped).
            asyncio.shield(loop.run_in_executor(self._executor, self._timed, self.runner.execute_stream, pending, emit))
            timeout = self.execution_timeout_s()
            deadline = loop.time() + timeout
            while True:
                try:
                    out, final = await asyncio.wait_for(responses.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    pending.backend.cancel(pending.info.token)
                    raise unavailable(f"model '{self.runner.name}' did not finish its responses within "
                                      f"{timeout:g} s (execution_timeout_s)") from None
                if isinstance(out, Exception):
                    raise out
                if out is not None:
                    yield pending.version, out
                if final:
                    return
        except (asyncio.CancelledError, GeneratorExit):  # the client has gone: the sender's is_cancelled() says so
            if pending is not None:
                pending.backend.cancel(pending.info.token)
            raise
        finally:
            self._reporter.in_flight -= 1
            self._reporter.schedule()

    def _timed(self, run, *args):
        """``run(*args)`` on the executor, its start kept for the health check."""
        self._running_since = time.monotonic()
        try:
            return run(*args)
        finally:
            self._running_since = None

    async def _run(self, inputs: Tensors, outputs: list[str] | None, version: int | str | None,
                   parameters: dict | None, info: RequestInfo, controls=None, state_outputs: list[str] = ()
                   ) -> tuple[Pending, Tensors | Exception]:
        """Check a request, batch and run it; ``controls(rows)``: a sequence request's control tensors and
        state, added after the check (they are not the model's declared inputs), and ``state_outputs`` the
        state it writes, kept beside the outputs asked for."""
        pending = self.runner.prepare(inputs, outputs, version, parameters, info)
        if controls is not None:
            pending.inputs = {**pending.inputs, **controls(pending.rows)}
        if pending.outputs is not None and state_outputs:
            pending.outputs = [*pending.outputs, *state_outputs]
        batching = self.runner.config.dynamic_batching
        try:
            pending.priority = batching.priority((parameters or {}).get("priority")) if batching else 0
            if not shadowable(info.callers):  # a shadow copy waits behind every client's request
                pending.priority = (batching.priority_levels if batching else 0) + 2
        except ValueError as exc:
            self.runner.release([pending], "OTHER")
            raise invalid(f"model '{self.runner.name}': {exc}") from None
        timeout = queue_timeout_ns(self.runner.config, pending.arrived_ns, parameters, pending.priority)
        if timeout is not None:  # REJECT: it may no longer start; DELAY: past it, it waits behind every level
            action, at_ns = timeout
            pending.deadline_ns, pending.delay_after_ns = (at_ns, None) if action == "REJECT" else (None, at_ns)
        timeout = self.execution_timeout_s()
        try:
            if self._batcher is not None:
                return pending, await asyncio.wait_for(self._batcher.submit(pending), timeout)
            (result,) = await asyncio.wait_for(self._run_batch([pending]), timeout)
            return pending, result
        except asyncio.TimeoutError:
            pending.backend.cancel(pending.info.token)
            raise unavailable(f"model '{self.runner.name}' did not answer within {timeout:g} s "
                              "(execution_timeout_s); retry later") from None
        except asyncio.CancelledError:  # the caller has gone: a queued request leaves the queue unrun
            pending.backend.cancel(pending.info.token)
            raise

    async def _snapshot(self):
        # Copied on the thread that updates them (the executor's; the event loop's for stub processes), with
        # the response cache's counts (event loop's).
        stats = (self.runner.statistics_snapshot() if self.runner.apart else
                 await asyncio.get_running_loop().run_in_executor(self._executor, self.runner.statistics_snapshot))
        for version, counts in self._cached.items():
            stats.setdefault(version, VersionStatistics()).merge(counts)
        self._operated.merge_into(stats)
        return stats

    async def _run_batch(self, pending: list[Pending]) -> list[Tensors | Exception]:
        # Shielded: a caller that gives up while its request waits for the executor must not cancel the
        # queued call, which is what releases the request's version (the result is dropped). A batch for stub
        # processes runs on the event loop (the stub does the work), any other on the model's executor.
        if self.runner.runs_apart(pending):
            return await asyncio.shield(self._execute_apart(pending))
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self._executor, self._execute, pending))

    def _execute(self, pending: list[Pending]) -> list[Tensors | Exception]:
        dropped, kept = self._queued.split(pending)
        return self._queued.merge(pending, dropped, self._timed(self.runner.execute, kept) if kept else [])

    async def _execute_apart(self, pending: list[Pending]) -> list[Tensors | Exception]:
        async with self._apart_turn:  # one batch at a time, as on the executor; its callers gone by then drop
            dropped, kept = self._queued.split(pending)
            self._running_since = time.monotonic()
            try:
                return self._queued.merge(pending, dropped, await self.runner.execute_async(kept) if kept else [])
            finally:
                self._running_since = None

    def execution_timeout_s(self) -> float:
        runner = getattr(self, "runner", None)  # (asked by BLS calls of a model's initialize too)
        configured = runner.config.parameter("execution_timeout_s") if runner is not None else None
        return float(configured or self._limits.execution_timeout_s)

    def queue_limit(self) -> int:
        """Requests this copy holds at once, waiting or running: as many as its own deployment would (Serve
        queues them before its replicas, which work on max_ongoing_requests each)."""
        return max_queued(self.runner.config, self._limits) + self._limits.max_ongoing_requests

    def check_health(self) -> None:
        """Serve's health check: a batch running past the execution timeout has wedged the replica (its one
        executor thread), so Serve replaces it; a batch wedged in a stub process ends with the process
        instead, and the replica serves on."""
        since, timeout = self._running_since, self.execution_timeout_s()
        if since is not None and time.monotonic() - since > timeout:
            if self.runner.abort_isolated(f"was stopped after the batch ran past its execution timeout of "
                                          f"{timeout:g} s"):
                return
            raise RuntimeError(f"model '{self.runner.name}': a batch has run for {time.monotonic() - since:.0f} s, "
                               f"past its execution timeout of {timeout:g} s")

    def followed(self) -> float:
        """The sync generation this copy has applied (the repository API waits for it); every one without."""
        return self.generation if self._follower is not None else super().followed()

    def metadata(self) -> dict[str, Any]:
        return self.runner.metadata()

    def ready(self) -> bool:
        return self.runner.ready

    def model_config(self) -> dict[str, Any]:
        """The completed config, in Triton's JSON form."""
        return self.runner.config.served_dict()

    def index(self) -> list[dict[str, str]]:
        return self.runner.index()

    def labels(self, outputs: list[str]) -> dict[str, Any]:
        """Whether the model batches, and the labels of ``outputs`` from their ``label_filename``s."""
        found = {name: self.runner.labels(name) for name in outputs}
        return {"batched": self.runner.config.batching, "labels": {n: v for n, v in found.items() if v is not None}}

    def statistics(self) -> dict[int, dict[str, Any]]:
        """This replica's statistics per version, in Triton's form (the collector sums all replicas)."""
        return {v: stats.to_triton(self.runner.name, v) for v, stats in self.runner.stats.items()}

    def __del__(self):
        if getattr(self, "_follower", None) is not None:
            self._follower.cancel()
        if getattr(self, "_reporter", None) is not None:
            self._reporter.stop()
        if getattr(self, "_operated", None) is not None:
            self._operated.stop()
        self.runner.unload()
        self._executor.shutdown(wait=False)
        self.loader.shutdown(wait=False)


@serve.deployment
class Model(ModelService):
    """A model's own Serve deployment: one ModelService per replica; call ``infer`` through a handle."""

    async def __init__(self, config: ModelConfig, source: VersionSource, statistics: Any = None, sync: Any = None,
                       limits: ServingLimits = ServingLimits(), ingress: str = ""):
        """``ingress``: the Ingress deployment's name (its repository API serves ``pb_utils.load_model``)."""
        models = ApplicationModels(ingress)
        ModelService.__init__(self, config, source, statistics, sync, limits, handles=models.handle,
                              control=models.control)
