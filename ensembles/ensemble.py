"""The Ensemble deployment: runs a Triton ensemble as a graph of calls to its step models' handles.

Each step starts as soon as its inputs exist, so independent branches run concurrently, and each step
model keeps its own dynamic batching, so steps of concurrent ensemble requests batch together. Large
tensors pass between steps by reference (deployments/serving/served.py ``sized_for``): a step's result stays in
Ray's object store and the next steps' replicas read it there, in place on their node, so the bytes do not
pass through this replica, which maps the result in place only for the shapes (Ray fetches it to this
replica's node when that is another). Small tensors go by value, through Serve's faster gRPC between
replicas when Serve uses it. Beyond Triton:
- a step input with more rows than the step model's ``max_batch_size`` is split into several requests
  (a detector may yield any number of crops for a batching classifier);
- a step whose inputs have zero rows is skipped and its outputs are empty, so a Python step can choose at
  run time which branch runs.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

import numpy as np
import ray
from ray import serve

from deployments.observability import settings_follower, tracing
from deployments.backends import Tensors
from deployments.config.model_config import ConfigError, ModelConfig
from deployments.config.dtypes import numpy_dtype
from deployments.errors import InferenceError, unavailable, unknown_model
from deployments.serving.served import ResultTensor, ServedModel, sized_for
from deployments.observability.statistics import StatisticsReporter, VersionStatistics
from deployments.config.validation import validate_inputs, validate_outputs
from ensembles.graph import EnsembleStep, check_graph, check_tensors

ENSEMBLE_VERSION = 1


@serve.deployment
class Ensemble(ServedModel):
    """Serves one ensemble like a model: ``infer``, metadata, config, readiness and statistics."""

    async def __init__(self, config: ModelConfig, steps: dict[str, Any], statistics: Any = None):
        self.config = config
        self.source = f"{config.name}/config"
        self.steps: list[EnsembleStep] = check_graph(config, self.source, set(steps))
        self.handles = steps
        self.step_configs: dict[str, ModelConfig] = {}
        self.reason = "step models not checked yet"
        self.stats = VersionStatistics()
        replica = serve.get_replica_context().replica_id.unique_id
        self._reporter = StatisticsReporter(statistics, config.name, replica, self._snapshot,
                                            ray.util.get_node_ip_address())
        self._check_lock = asyncio.Lock()
        settings_follower.follow(statistics)
        self._tracer = tracing.tracer_for(statistics)

    async def _snapshot(self) -> dict[int, VersionStatistics]:
        return {ENSEMBLE_VERSION: copy.deepcopy(self.stats)}

    async def _checked(self) -> bool:
        """Check the steps against their models' completed configs once every step model is ready."""
        if self.step_configs:
            return True
        async with self._check_lock:
            if self.step_configs:
                return True
            names = sorted(self.handles)
            ready = await asyncio.gather(*(self.handles[n].ready.remote() for n in names))
            not_ready = [n for n, r in zip(names, ready) if not r]
            if not_ready:
                self.reason = f"step models {not_ready} are not ready"
                return False
            configs = await asyncio.gather(*(self.handles[n].model_config.remote() for n in names))
            step_configs = {n: ModelConfig.model_validate(c) for n, c in zip(names, configs)}
            try:
                check_tensors(self.config, self.steps, step_configs, self.source)
            except ConfigError as exc:
                self.reason = str(exc)
                return False
            self.step_configs, self.reason = step_configs, ""
            return True

    async def ready(self) -> bool:
        return await self._checked()

    async def infer_versioned(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None, request_id: str = "",
        callers: tuple[str, ...] = (),
    ) -> tuple[int, Tensors]:
        """Run the graph for one request; returns the ensemble version (1) and the requested outputs. A
        sampled request (``trace``) gets a span for the ensemble and one per step, the step models' own
        spans below each step's."""
        start = time.perf_counter_ns()
        if not await self._checked():
            raise unavailable(f"ensemble '{self.config.name}' is not ready: {self.reason}")
        if version not in (None, "", ENSEMBLE_VERSION, str(ENSEMBLE_VERSION)):
            raise unknown_model(self.config.name, version, "an ensemble serves version 1")
        rows = validate_inputs(self.config, inputs)
        wanted = validate_outputs(self.config, outputs) or [t.name for t in self.config.output]
        self._reporter.in_flight += 1
        span = None
        if trace is not None and self._tracer is not None:
            span = self._tracer.span(f"ensemble {self.config.name}", trace, tracing.epoch_ns(start),
                                     model=self.config.name, version=ENSEMBLE_VERSION)
        scheduled = time.perf_counter_ns()
        try:
            tensors = await self._run_graph(dict(inputs), parameters, span, tuple(callers))
        except InferenceError:
            self.stats.record_request(time.perf_counter_ns() - start, ok=False, reason="OTHER")  # as Triton's ensembles
            raise
        finally:
            self._reporter.in_flight -= 1
            self._reporter.schedule()
            if span is not None:
                span.end()
        done = time.perf_counter_ns()
        # As Triton's ensembles count: every request queued once and run once, as a batch of its rows, in
        # each compute stage (perf_analyzer finds the version that served by the queue count, and refuses
        # stages whose counts differ); the steps' own time is all compute_infer here.
        self.stats.record_request(done - start)
        self.stats.queue.add(scheduled - start)
        self.stats.record_execution(rows, 1, 0, done - scheduled, 0)
        self.stats.inference_count += rows
        return ENSEMBLE_VERSION, {name: tensors[name] for name in wanted}

    async def _run_graph(self, tensors: Tensors, parameters: dict | None, span=None,
                         callers: tuple[str, ...] = ()) -> Tensors:
        """Run every step; ``tensors`` holds each tensor as an array (a step output's is read in place from
        the object store, for its shape), ``passed`` each step output as a reference for the next steps.
        ``callers``: the BLS callers of the request, passed on to every step (deployments/serving/bls.py)."""
        passed: dict[str, ResultTensor] = {}
        pending = list(range(len(self.steps)))
        running: dict[asyncio.Task, int] = {}
        try:
            while pending or running:
                for i in [i for i in pending if set(self.steps[i].input_map.values()) <= tensors.keys()]:
                    pending.remove(i)
                    running[asyncio.ensure_future(self._run_step(i, tensors, passed, parameters, span,
                                                                             callers))] = i
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    i = running.pop(task)
                    outputs, result = task.result()  # raises the step's error
                    for model_output, tensor in self.steps[i].output_map.items():
                        tensors[tensor] = outputs[model_output]
                        if result is not None:
                            passed[tensor] = ResultTensor(result, model_output)
        finally:
            for task in running:
                task.cancel()
        return tensors

    async def _run_step(self, i: int, tensors: Tensors, passed: dict[str, ResultTensor], parameters: dict | None,
                        parent=None, callers: tuple[str, ...] = ()) -> tuple[Tensors, Any]:
        step = self.steps[i]
        if parent is None:
            return await self._call_step(i, tensors, passed, parameters, None, callers)
        span = self._tracer.span(f"step {i} {step.model_name}", parent, model=step.model_name, step=i)
        try:
            return await self._call_step(i, tensors, passed, parameters, self._tracer.carried(span), callers)
        finally:
            span.end()

    async def _call_step(self, i: int, tensors: Tensors, passed: dict[str, ResultTensor], parameters: dict | None,
                         trace: dict[str, str] | None, callers: tuple[str, ...] = ()) -> tuple[Tensors, Any]:
        """The step's outputs, and the object reference of its one result when it was a call by reference
        (large tensors, deployments/serving/served.py sized_for); None when the step was skipped, called by value
        or split into several requests (whose outputs are joined here)."""
        step = self.steps[i]
        model = self.step_configs[step.model_name]
        shapes = {model_input: tensors[tensor].shape for model_input, tensor in step.input_map.items()}
        requested = list(step.output_map)
        version = None if step.model_version < 0 else step.model_version
        handle = self.handles[step.model_name]
        calls = []
        try:
            if model.batching and any(len(shape) and shape[0] == 0 for shape in shapes.values()):
                return _empty_outputs(model, requested), None
            rows = next(iter(shapes.values()))[0] if model.batching else 0
            extra = {"trace": trace} if trace is not None else {}
            if callers:
                extra["callers"] = callers
            for chunk in _row_ranges(rows, model.max_batch_size):
                inputs = _step_inputs(step, tensors, passed, chunk)
                calls.append(sized_for(handle, inputs).infer.remote(inputs, requested, version, parameters, **extra))
            answers = await asyncio.gather(*(_answer(call) for call in calls))
        except asyncio.CancelledError:
            for call in calls:
                if hasattr(call, "cancel"):  # a DeploymentResponse (a colocated step's call is a coroutine)
                    call.cancel()
            raise
        except Exception as exc:
            error = InferenceError.from_exception(exc)
            raise InferenceError(error.code, f"ensemble '{self.config.name}' step {i} (model "
                                             f"'{step.model_name}') failed: {error.message}") from None
        if len(answers) == 1:
            return answers[0]
        return {name: np.concatenate([outputs[name] for outputs, _ in answers]) for name in requested}, None

    async def metadata(self) -> dict[str, Any]:
        """Triton's model metadata; its version once the steps are checked (checked here if not yet, as
        Triton's ensemble is ready once its steps are: a client may ask before any request)."""
        lead = [-1] if self.config.batching else []
        ready = await self._checked()
        return {
            "name": self.config.name,
            "versions": [str(ENSEMBLE_VERSION)] if ready else [],
            "platform": self.config.platform,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": lead + t.dims} for t in self.config.input],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": lead + t.dims} for t in self.config.output],
        }

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()

    def labels(self, outputs: list[str]) -> dict[str, Any]:
        """For the classification extension: the ensemble's batching; its outputs have no label files."""
        return {"batched": self.config.batching, "labels": {}}

    async def index(self) -> list[dict[str, str]]:
        ready = await self._checked()
        return [{"name": self.config.name, "version": str(ENSEMBLE_VERSION),
                 "state": "READY" if ready else "UNAVAILABLE", "reason": self.reason}]

    def statistics(self) -> dict[int, dict[str, Any]]:
        return {ENSEMBLE_VERSION: self.stats.to_triton(self.config.name, ENSEMBLE_VERSION)}


async def colocated_ensemble(config: ModelConfig, steps: dict[str, Any], statistics: Any = None) -> Ensemble:
    """An Ensemble run inside another replica (the Ingress's) instead of as a deployment of its own; its
    steps are the handles given: LocalHandles for the models colocated there, whose calls pass arrays in
    process, and the other steps' DeploymentHandles."""
    cls = Ensemble.func_or_class
    ensemble = cls.__new__(cls)
    await ensemble.__init__(config, steps, statistics)
    return ensemble


async def _answer(call) -> tuple[Tensors, Any]:
    """A step call's outputs and, for a call by reference, its result's object reference (the outputs are
    read from the object store in place: only their shapes are used here)."""
    if not getattr(call, "by_reference", False):  # by value, or a colocated step's call (in process)
        return await call, None
    result = await call._to_object_ref()
    return await result, result


def _row_ranges(rows: int, max_rows: int) -> list[tuple[int, int] | None]:
    """The row ranges of requests of at most ``max_rows`` rows each (the step model's batch limit); [None]
    for one request of every row."""
    if rows <= max_rows:
        return [None]
    return [(start, min(start + max_rows, rows)) for start in range(0, rows, max_rows)]


def _step_inputs(step: EnsembleStep, tensors: Tensors, passed: dict[str, ResultTensor],
                 rows: tuple[int, int] | None) -> dict[str, Any]:
    """One request's inputs: earlier steps' outputs by reference, the ensemble's inputs (and joined outputs
    of split steps) as arrays."""
    inputs = {}
    for model_input, tensor in step.input_map.items():
        if tensor in passed:
            inputs[model_input] = ResultTensor(passed[tensor].result, passed[tensor].name, rows)
        else:
            inputs[model_input] = tensors[tensor] if rows is None else tensors[tensor][slice(*rows)]
    return inputs


def _empty_outputs(model: ModelConfig, names: list[str]) -> Tensors:
    """Zero-row outputs for a skipped step, typed and shaped as the step model's config says."""
    outputs = {t.name: t for t in model.output}
    return {name: np.empty([0] + [max(d, 0) for d in outputs[name].dims], dtype=numpy_dtype(outputs[name].datatype))
            for name in names}
