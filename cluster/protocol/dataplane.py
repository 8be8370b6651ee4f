"""The one data plane behind both transports: HTTP and gRPC decode, call these, encode.

It holds the model deployments' handles (passed in by the app builder), the models whose config failed,
with the reason, and follows the sync deployment for the models loaded later as applications of their own
and the repository's listing; every failure is an InferenceError with a transport-neutral code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator

from ray import serve

from cluster.protocol.classification import classify
from cluster.protocol.codec import InferRequest
from cluster.protocol.repository_control import ensemble_steps, override_config, unload_dependents, uploaded_files
from cluster.protocol.shared_memory import SharedMemory
from cluster.repository.model_apps import load_failure
from cluster.repository.paths import check_model_name
from deployments.observability import settings_follower, tracing
from deployments.backends import Tensors, keep_parameters
from deployments.errors import invalid, no_available_versions, unavailable, unknown_model
from deployments.serving.follow import UNLOADED
from deployments.serving.served import answer, sized_for, stream_of

#: The name /v2 metadata gives by default: Triton's, which Triton's own clients check for.
SERVER_NAME = "triton"
#: Request parameters the protocol itself uses; the rest reach the model.
PROTOCOL_PARAMETERS = {"binary_data_output", "triton_enable_empty_final_response"}
#: Triton's extension names for what this server serves (clients may check them).
EXTENSIONS = ["classification", "binary_tensor_data", "model_configuration", "statistics", "model_repository",
              "model_repository(unload_dependents)", "system_shared_memory", "sequence", "schedule_policy",
              "parameters", "logging", "trace"]
#: How long a load or unload waits for the model's replicas to follow.
CONTROL_TIMEOUT_S = 120.0
#: How long a call to a model for readiness, metadata, config, the index or statistics may take (a model
#: with no replica able to answer would otherwise hold the caller, and a fan-out every caller).
CALL_TIMEOUT_S = 30.0
NOT_LOADED = "not loaded"
ON_DEMAND = "scaled to zero when idle: a request starts a replica"

logger = logging.getLogger(__name__)


class DataPlane:
    """Server and model operations over the model deployments' handles."""

    def __init__(self, models: dict[str, Any], failed: dict[str, str], options: Any, statistics: Any,
                 sync: Any = None, shared_memory: SharedMemory | None = None):
        """``options``: the Ingress's IngressOptions (server version, models that scale to zero, the model
        control mode); ``shared_memory``: the replica's system shared memory regions (None: none offered)."""
        self.shared_memory = shared_memory
        self.built, self.built_failed = dict(models), dict(failed)
        self.models = dict(models)  # the built ones and those loaded later
        self.failed = dict(failed)
        self.added: dict[str, str] = {}  # model loaded later -> its application
        self.repository: list[str] = []  # every model in the store, as the sync last listed it
        self.unloaded: set[str] = set()  # built models unloaded through the repository API (maybe no replicas)
        self.generation = 0  # the sync's last generation this plane has followed
        self.version, self.name = options.version, options.server_name
        self.control_mode = options.model_control_mode
        self.collector = statistics  # handle of the StatisticsCollector
        self.tracer = tracing.tracer_for(statistics)  # samples requests for tracing (None without a collector)
        self.sync = sync  # handle of the ModelStoreSync
        # Models that autoscale from zero: a call to one starts a replica, so the fan-outs below (readiness,
        # index, statistics) leave them out and report them ready to start on demand. Built ones are
        # known from the start, those loaded later from the sync.
        self.built_on_demand = self.on_demand = frozenset(options.on_demand)

    def handle(self, model: str) -> Any:
        """The model's handle; unknown models are NOT_FOUND, models that failed to configure or are not
        loaded UNAVAILABLE."""
        if model in self.failed:
            raise no_available_versions(model, self.failed[model])
        if model in self.unloaded:
            raise no_available_versions(model, f"it is {UNLOADED}")
        try:
            return self.models[model]
        except KeyError:
            if model in self.repository:
                raise no_available_versions(model, f"it is {NOT_LOADED}; POST /v2/repository/models/{model}/load "
                                                   "loads it") from None
            raise unknown_model(model) from None

    async def follow_models(self) -> None:
        """Keep the models loaded later and the repository listing as the sync deployment has them."""
        while True:
            try:
                self._follow(await self.sync.watch_models.remote(self.generation))
            except Exception as exc:  # the sync restarting: serving goes on, ask again shortly
                logger.warning("model watch failed: %r", exc)
                await asyncio.sleep(1.0)

    def _follow(self, watched: tuple) -> None:
        """Apply one answer of the sync's ``watch_models``."""
        generation, added, repository, unloaded, on_demand = watched
        models = dict(self.built)
        for model, app in added.items():
            same = self.added.get(model) == app and model in self.models
            models[model] = self.models[model] if same else serve.get_deployment_handle(model, app_name=app)
        self.models, self.added, self.repository, self.unloaded = models, added, repository, set(unloaded)
        self.on_demand = self.built_on_demand | set(on_demand)
        self.failed = {m: r for m, r in self.built_failed.items() if m not in added}
        self.generation = generation

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "extensions": EXTENSIONS}

    async def server_ready(self) -> bool:
        """Strict readiness, as Triton's default: ready when every model in the repository is."""
        if self.failed:
            return False
        calls = (bounded(h.ready.remote(), f"model '{name}'") for name, h in self._awake().items())
        answers = await asyncio.gather(*calls, return_exceptions=True)
        return all(not isinstance(answer, BaseException) and bool(answer) for answer in answers)

    def _loaded(self) -> dict[str, Any]:
        """The models' handles less the unloaded models' (which may have no replica to answer)."""
        return {name: h for name, h in self.models.items() if name not in self.unloaded}

    def _awake(self) -> dict[str, Any]:
        """The loaded models' handles less those that scale to zero (a call would wake them)."""
        return {name: h for name, h in self._loaded().items() if name not in self.on_demand}

    async def infer(
        self, model: str, version: str | None, inputs: Tensors, outputs: list[str] | None,
        parameters: dict | None = None, trace: dict[str, str] | None = None, request_id: str = "",
    ) -> tuple[int, Tensors]:
        """Run a request on a model; returns the version that answered and the outputs. The request's
        parameters (less the protocol's own) and id go with it; ``trace``: a sampled request's span context."""
        extra = {"trace": trace} if trace is not None else {}
        if request_id:
            extra["request_id"] = request_id
        return await answer(sized_for(self.handle(model), inputs).infer_versioned.remote(
            inputs, outputs, version, passed_parameters(parameters), **extra))

    async def infer_request(self, model: str, version: str | None, request: InferRequest) -> tuple[int, Tensors]:
        """Run a decoded request (either transport's), reading its inputs from and writing its outputs to
        system shared memory where it names regions."""
        check_version(version)
        started = time.perf_counter()
        span = self._sampled(model, version, request)
        try:
            inputs = await self._inputs(request)
            answered, outputs = await self.infer(model, version, inputs, request.outputs, request.parameters,
                                                 span and self.tracer.carried(span), request.id or "")
            if request.classifications:
                outputs = await self._classified(model, outputs, request.classifications)
            if request.shared_outputs:
                await self.shared_memory.write_outputs(outputs, request.shared_outputs)
        except Exception as exc:
            log_request(request, model, version, started, exc)
            raise
        finally:
            if span is not None:
                span.end()
        log_request(request, model, answered, started)
        return answered, outputs

    async def _classified(self, model: str, outputs: Tensors, classifications: dict[str, int]) -> Tensors:
        """The outputs with those the request classifies replaced by their top classes (Triton's
        classification extension), labelled from the model's label files."""
        known = await bounded(self.handle(model).labels.remote(list(classifications)), f"model '{model}'")
        return keep_parameters(outputs, {
            name: classify(name, tensor, classifications[name], known["batched"], known["labels"].get(name))
            if name in classifications else tensor for name, tensor in outputs.items()})

    def _sampled(self, model: str, version: str | None, request: InferRequest):
        """The root span of a request the trace settings sample (None for the others)."""
        if self.tracer is None or not self.tracer.sample(model):
            return None
        return self.tracer.span(f"infer {model}", None, model=model, requested_version=version or None,
                                request_id=request.id or None,
                                serve_request_id=serve.context._get_serve_request_context().request_id or None)

    async def _inputs(self, request: InferRequest) -> Tensors:
        """The request's inputs, those in shared memory read."""
        if not (request.shared_inputs or request.shared_outputs):
            return request.inputs
        if self.shared_memory is None:
            raise invalid("this server offers no system shared memory")
        return {**request.inputs, **await self.shared_memory.read_inputs(request.shared_inputs)}

    async def stream_request(self, model: str, version: str | None, request: InferRequest
                             ) -> AsyncIterator[tuple[int, Tensors]]:
        """Every response to a decoded request, as (version, outputs): a decoupled model's zero or more,
        any other's one (gRPC ModelStreamInfer, HTTP generate). Inputs may come from shared memory; outputs
        travel in each response."""
        check_version(version)
        if request.shared_outputs:
            raise invalid("a streamed request's outputs travel in its responses, not in shared memory")
        inputs = await self._inputs(request)
        handle = self.handle(model).options(stream=True)
        span = self._sampled(model, version, request)
        extra = {"trace": self.tracer.carried(span)} if span is not None else {}
        if request.id:
            extra["request_id"] = request.id
        responses = None
        try:
            responses = stream_of(handle.infer_stream.remote(inputs, request.outputs, version,
                                                             passed_parameters(request.parameters), **extra))
            async for answered, outputs in responses:
                yield answered, outputs
        finally:
            try:
                if responses is not None:  # a client that stopped early: the model's stream is cancelled now
                    await responses.aclose()
            finally:
                if span is not None:
                    span.end()

    async def trace_settings(self, model: str | None = None, changes: dict[str, Any] | None = None
                             ) -> dict[str, Any]:
        """Triton's trace extension: the settings for ``model`` (None: the global ones), after ``changes``."""
        if model:
            self.handle(model)  # an unknown model is NOT_FOUND
        settings = await bounded(self.collector.trace_settings.remote(model, changes), "the statistics collector")
        if changes:
            await bounded(settings_follower.catch_up(self.collector), "the statistics collector")
        return settings

    async def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        check_version(version)
        metadata = await bounded(self.handle(model).metadata.remote(), f"model '{model}'")
        versions = metadata["versions"]
        if not versions:
            raise no_available_versions(model, "no version is ready")
        if version and version not in versions:
            raise unknown_model(model, version, f"it serves {versions}")
        return metadata

    async def model_config(self, model: str) -> dict[str, Any]:
        return await bounded(self.handle(model).model_config.remote(), f"model '{model}'")

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        if self.generation == 0 and self.sync is not None:  # asked before the follower had the store's listing
            self._follow(await bounded(self.sync.watch_models.remote(0), "the model store sync"))
        awake = self._awake()
        calls = (bounded(h.index.remote(), f"model '{name}'") for name, h in awake.items())
        answers = await asyncio.gather(*calls, return_exceptions=True)
        rows = [row for name, answer in zip(awake, answers)
                for row in (answer if isinstance(answer, list) else
                            [{"name": name, "version": "", "state": "UNAVAILABLE", "reason": str(answer)}])]
        rows += [{"name": m, "version": "", "state": "READY", "reason": ON_DEMAND}
                 for m in sorted(self.on_demand & self._loaded().keys())]
        rows += [{"name": m, "version": "", "state": "UNAVAILABLE", "reason": UNLOADED} for m in sorted(self.unloaded)]
        rows += [{"name": m, "version": "", "state": "UNAVAILABLE", "reason": r} for m, r in self.failed.items()]
        rows += [{"name": m, "version": "", "state": "UNAVAILABLE", "reason": NOT_LOADED}
                 for m in self.repository if m not in self.models and m not in self.failed]
        if ready_only:
            rows = [row for row in rows if row["state"] == "READY"]
        return sorted(rows, key=lambda row: (row["name"], row["version"]))

    async def statistics(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics for one model (one version) or all, summed over every replica."""
        check_version(version)
        if model:
            self.handle(model)
        names = [model] if model else sorted(self._awake())
        metadata = await asyncio.gather(*(bounded(self.models[name].metadata.remote(), f"model '{name}'")
                                          for name in names))
        versions: dict[str, list[int] | None] = {}
        if not model:
            versions.update({name: None for name in self.on_demand & self._loaded().keys()})  # as reported
        for name, meta in zip(names, metadata):
            if version:
                if version not in meta["versions"]:
                    raise unknown_model(name, version, f"it serves {meta['versions']}")
                versions[name] = [int(version)]
            else:
                versions[name] = [int(v) for v in meta["versions"]]
        return {"model_stats": await bounded(self.collector.model_stats.remote(versions),
                                               "the statistics collector")}

    async def log_settings(self, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """Triton's logging extension: the application's log settings, after ``changes``."""
        settings = await bounded(self.collector.log_settings.remote(changes), "the statistics collector")
        if changes:
            await bounded(settings_follower.catch_up(self.collector), "the statistics collector")
        return settings

    def check_model_control(self) -> None:
        """Loads and unloads are allowed in explicit model control mode only."""
        if self.control_mode != "explicit":  # Triton's text, which clients check for
            raise unavailable(f"explicit model load / unload is not allowed if polling is enabled (model control "
                              f"mode '{self.control_mode}'; the server's operator can choose 'explicit')")

    async def set_loaded(self, model: str, loaded: bool, parameters: dict | None = None) -> None:
        """Triton's repository load / unload, on every replica; returns once this plane and the model's
        replica it asks have followed. A model the application was not built with is deployed as its own
        application on load and deleted on unload. A load may carry a ``config`` parameter (Triton's model
        config as JSON) that replaces the repository's config until the next load, and with it ``file:``
        parameters that serve the model from those files; a load after which no version is ready fails,
        naming the reasons. An ensemble the application was built with is not loaded or unloaded itself (it
        follows its steps); an unload with ``unload_dependents`` (Triton's parameter) also unloads the steps
        of an ensemble that no other ensemble uses, nested ensembles' too."""
        self.check_model_control()
        parameters = parameters or {}
        if not isinstance(parameters, dict):
            raise invalid("'parameters' of a repository load must be an object")
        check_model_name(model)
        files = uploaded_files(model, parameters) if loaded else {}
        if self.sync is None:
            raise invalid("this application has no model store sync: models cannot be loaded or unloaded")
        dependents = not loaded and unload_dependents(parameters)
        steps = ensemble_steps(await self.model_config(model)) if dependents and model in self.models else []
        if model in self.built and model not in (await self.sync.status.remote())["desired"]:
            if not dependents:
                raise invalid(f"model '{model}' cannot be loaded or unloaded (ensembles follow their steps); "
                              "an unload with the parameter unload_dependents unloads its steps")
        else:
            await self._follow_control(model, loaded, parameters, files)
        for step in steps:  # those no other ensemble uses
            if not any(step in ensemble_steps(config) for config in await self._other_configs(model, step)):
                await self.set_loaded(step, False, {"unload_dependents": True})

    async def traffic(self, model: str, change: dict | None = None) -> dict[str, Any]:
        """A model's traffic split between its versions (``{"traffic": null}`` without one); a ``change``
        (``{"weights": {...}, "sticky_by": ...}``, or ``{"weights": null}``: the config's again) returns once
        the model's replica it asks has followed (its other copies follow the same push). In the model
        control modes that let the repository change (``poll``, ``explicit``): it loads nothing."""
        if self.sync is None:
            raise invalid("this application has no model store sync: its traffic cannot change")
        if change is not None and self.control_mode == "none":
            raise unavailable("a traffic split cannot change in model control mode 'none' (nothing changes after "
                              "start); the server's operator can choose 'poll' or 'explicit'")
        self.handle(model)
        generation, split = await bounded(self.sync.traffic.remote(model, change), "the model store sync")
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while change is not None and not await bounded(self._followed(model, True, generation), f"model '{model}'"):
            if time.monotonic() > deadline:
                raise unavailable(f"model '{model}' did not follow its new traffic split within "
                                  f"{CONTROL_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.1)
        return {"model": model, "traffic": split}

    async def _other_configs(self, *models: str) -> list[dict[str, Any]]:
        """The configs of the served models other than ``models`` (those awake that answer)."""
        names = [name for name in self._awake() if name not in models]
        configs = await asyncio.gather(*(self.model_config(name) for name in names), return_exceptions=True)
        return [config for config in configs if isinstance(config, dict)]

    async def _follow_control(self, model: str, loaded: bool, parameters: dict, files: dict) -> None:
        """A load or unload through the sync, once this plane and the model's replica have followed it."""
        config = override_config(model, parameters.get("config")) if loaded and "config" in parameters else None
        generation = await self.sync.set_loaded.remote(model, loaded, config, files or None)
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while not await self._followed(model, loaded, generation):
            if time.monotonic() > deadline:
                raise unavailable(f"model '{model}' did not {'load' if loaded else 'unload'} within "
                                  f"{CONTROL_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.2)
        if loaded and not await self.models[model].ready.remote():
            raise load_failure(model, await self.models[model].index.remote())

    async def _followed(self, model: str, loaded: bool, generation: int) -> bool:
        """This plane, and (for a load) the model's replica the call reaches, have followed ``generation``."""
        if self.generation < generation:
            return False
        return not loaded or await self.models[model].followed.remote() >= generation


def log_request(request: InferRequest, model: str, version, started: float, error: Exception | None = None) -> None:
    """At log_verbose_level >= 1 (DEBUG), one line per inference request: the client's request id and
    Serve's, the model and version, the outcome and the time in this replica."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    outcome = "ok" if error is None else f"failed: {error}"
    logger.debug("inference request id=%s serve_request_id=%s model=%s version=%s %s in %.3f ms",
                 request.id or "-", serve.context._get_serve_request_context().request_id or "-", model,
                 version or "-", outcome, (time.perf_counter() - started) * 1000)


async def bounded(call, what: str, timeout_s: float | None = None):
    """A call (to ``what``: "model 'm'") that answers within ``timeout_s`` (default CALL_TIMEOUT_S), else
    UNAVAILABLE."""
    timeout_s = CALL_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        return await asyncio.wait_for(call, timeout_s)
    except asyncio.TimeoutError:
        raise unavailable(f"{what} did not answer within {timeout_s:g} s") from None


def check_version(version: str | None) -> None:
    """A version a request names must be a number (Triton's words, which its clients check)."""
    if version and not (version.isascii() and version.isdigit()):
        raise invalid(f"failed to get model version from specified version string '{version}'")


def passed_parameters(parameters: dict | None) -> dict | None:
    """The request's parameters less the protocol's own (the rest reach the model)."""
    own = {k: v for k, v in (parameters or {}).items() if k not in PROTOCOL_PARAMETERS}
    return own or None
