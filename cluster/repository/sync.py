"""ModelStoreSync: one per application, it watches the model store and pushes version changes to replicas.

It polls the store (every ``poll_interval_s``) and keeps the desired state: for each model, its config (the
store's, or one given with a repository load) and the versions its version policy selects, each with a
fingerprint of its files. Whenever that state changes it raises a generation number; every ModelService
long-polls ``watch`` and, on a new generation, loads the new versions (or every version, when the config
changed) beside the old ones, warms them up, swaps, and unloads the old (``ModelRunner.update``). A store
that cannot be read leaves the desired state as it was, so serving is not disturbed; the error is kept
for ``status`` and the next poll tries again.

It also answers the repository API (``cluster/repository/model_apps.py`` talks to Serve's controller for it): a model
the application was built with is unloaded and loaded inside its replicas, which are scaled to zero and
back; a model it was not built with is deployed as an application of its own on load and deleted on
unload. Every Ingress replica long-polls ``watch_models`` to learn those models, the unloaded ones and the
repository's listing.

It is a Serve deployment (one replica) rather than a bare detached actor: Serve starts it with the
application, restarts it if it dies (the new replica adopts the models' applications it finds), and
passes its handle to the models with ``.bind()``. What users change through the repository API (configs
given with a load, unloads) is saved in Ray's key-value store after every change, so a restarted replica
serves on as its predecessor did; the application's deletion deletes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from cluster.repository import model_apps
from cluster.repository.paths import check_model_name
from cluster.repository.control_state import SETTINGS_PREFIX, SavedState, Uploads
from cluster.repository.uploaded import UploadedModel
from deployments.config.model_config import ConfigError, ModelConfig, parse_yaml
from deployments.errors import InferenceError, invalid, unavailable, unknown_model, without_paths
from ensembles.graph import check_graph, is_ensemble, scheduling

logger = logging.getLogger(__name__)

#: How long a replica's ``watch`` call waits for a change before it returns and asks again. Short, because
#: a sync replica that stops waits for its open watches before its ``__del__`` runs.
WATCH_TIMEOUT_S = 5.0


@serve.deployment(num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
class ModelStoreSync:
    async def __init__(self, store: Any, configs: dict[str, ModelConfig], args: Any, statistics: Any = None,
                       steps: frozenset[str] = frozenset()):
        """``configs``: the plain models the application was built with, with their configs; ``args``: the
        builder's AppArgs (poll interval, and the options of models loaded later); ``statistics``: the
        StatisticsCollector's handle, for models loaded later; ``steps``: the step models of the
        application's ensembles, whose replicas stay when they are unloaded so the ensembles answer at once."""
        self.store = store
        self.configs = dict(configs)  # model -> the store's config, as last read
        self.built = frozenset(configs)
        self.steps = frozenset(steps)
        self.ensemble_steps: dict[str, set[str]] = {}  # ensemble loaded later -> its step models
        self.scaled_down: set[str] = set()  # built models unloaded down to zero replicas
        self.overrides: dict[str, ModelConfig] = {}  # model -> config given with a repository load
        self.args = args
        self.statistics = statistics
        self.poll_interval_s = args.poll_interval_s if args.polls() else 0.0
        # Milliseconds since the epoch to begin with, so a restarted sync never goes back behind the
        # generations its followers have seen.
        self.generation = time.time_ns() // 1_000_000
        self.desired: dict[str, dict[int, str]] = {}  # model -> {version: fingerprint}
        self.errors: dict[str, str] = {}
        self.unloaded: set[str] = set()  # built models unloaded through the repository API
        self.added: dict[str, str] = {}  # model loaded later -> its own application
        self.uploads = Uploads(args.max_uploaded_bytes)  # the files of models loaded from files
        self.repository: list[str] = []  # every model in the store, as last listed
        self._changed = asyncio.Condition()
        self._control = asyncio.Lock()  # one load or unload at a time
        context = serve.get_replica_context()
        self.app = context.app_name
        self.saved = SavedState(self.app)  # what users changed through the repository API, for a restart
        self.handle = serve.get_deployment_handle(context.deployment, context.app_name)
        await self._adopt()
        await self._adopt_scaled_down()
        await self._restore()
        await self.poll()
        poll = self.poll_interval_s > 0
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever()) if poll else None

    async def _adopt(self) -> None:
        """Take over the models' own applications a previous replica deployed; delete those of models the
        application now has itself, or whose config no longer reads."""
        repository = await asyncio.to_thread(self.store.models)
        for model, app in (await asyncio.to_thread(model_apps.deployed, self.app)).items():
            try:
                if model in self.built:
                    raise ValueError("the application itself serves it now")
                if model not in repository:  # loaded from files: it does not follow the store
                    self.added[model] = app
                    continue
                config = await asyncio.to_thread(self.store.config, model)
                if is_ensemble(config):  # ensembles follow their steps, not the sync
                    self.ensemble_steps[model] = {step.model_name for step in scheduling(config, model).step}
                else:
                    self.configs[model] = config
                self.added[model] = app
            except Exception as exc:
                logger.warning("deleting application '%s': %s", app, exc)
                await asyncio.to_thread(model_apps.delete, app)

    async def _adopt_scaled_down(self) -> None:
        """Built models a previous replica scaled down to zero are unloaded (not those an autoscaler put at
        zero, whose target is its own)."""
        targets = await asyncio.to_thread(model_apps.replicas, self.app)
        self.scaled_down = {m for m in self.built if targets.get(m, (1, 1))[0] == 0
                            and getattr(self.config(m), "autoscaling", None) is None}
        self.unloaded |= self.scaled_down

    async def _restore(self) -> None:
        """Take back what users changed through the repository API before this replica started: configs given
        with a load, built models unloaded (those kept at zero replicas are known from Serve already), and
        the uploaded models' files."""
        state = await asyncio.to_thread(self.saved.read)
        if not state:
            return
        for model, config in state.get("overrides", {}).items():
            if model in self.built or model in self.added:
                self.overrides[model] = parse_yaml(json.dumps(config), f"the saved config of '{model}'", model)
        self.unloaded |= set(state.get("unloaded", [])) & self.built
        self.uploads.restore(state.get("uploads", {}), set(self.added))
        logger.info("restored the repository API's changes: overrides %s, unloaded %s",
                    sorted(self.overrides), sorted(self.unloaded))

    async def _save(self) -> None:
        """Keep what users changed through the repository API where a restarted replica finds it."""
        state = {"overrides": {m: c.to_dict() for m, c in self.overrides.items()}, "unloaded": sorted(self.unloaded),
                 "uploads": self.uploads.files}
        await asyncio.to_thread(self.saved.write, state)

    def config(self, model: str) -> ModelConfig | None:
        """The config a model is served with: the one given with its last load, else the store's."""
        return self.overrides.get(model) or self.configs.get(model)

    def _scan(self) -> tuple[dict[str, dict[int, str]], dict[str, ModelConfig], list[str], dict[str, str]]:
        desired, configs, repository, errors = dict(self.desired), dict(self.configs), self.repository, {}
        try:
            repository = self.store.models()
        except Exception as exc:
            errors[""] = f"cannot list the store: {exc}"
        for model in self.configs:
            try:
                configs[model] = self.store.config(model)
            except Exception as exc:  # a broken config.pbtxt: the last good config serves on
                errors[model] = f"cannot read the config: {exc}"
            try:
                policy = (self.overrides.get(model) or configs[model]).version_policy
                versions = policy.select(self.store.versions(model))
                desired[model] = {v: self.store.fingerprint(model, v) for v in versions}
            except Exception as exc:  # keep the last known state: serving goes on
                errors[model] = f"cannot read the store: {exc}"
        return desired, configs, repository, errors

    async def poll(self) -> int:
        """Read the store once; returns the generation (raised if anything changed)."""
        desired, configs, repository, errors = await asyncio.to_thread(self._scan)
        for model, error in errors.items():
            if self.errors.get(model) != error:
                logger.warning("%s: %s", f"model '{model}'" if model else "the store", error)
        self.errors = errors
        if desired != self.desired or configs != self.configs or repository != self.repository:
            self.desired, self.configs, self.repository = desired, configs, repository
            await self._raise_generation()
        return self.generation

    async def _raise_generation(self) -> int:
        async with self._changed:
            self.generation += 1
            self._changed.notify_all()
        return self.generation

    async def _poll_forever(self) -> None:
        backoff = self.poll_interval_s
        while True:
            await asyncio.sleep(backoff)
            try:
                await self.poll()
                backoff = self.poll_interval_s if not self.errors else min(backoff * 2, 60.0)
            except Exception as exc:
                logger.warning("store poll failed: %r", exc)

    async def _wait_for_change(self, generation: int) -> None:
        try:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.generation > generation), WATCH_TIMEOUT_S)
        except asyncio.TimeoutError:
            pass

    async def watch(self, model: str, generation: int) -> tuple[int, list[int] | None, ModelConfig | None]:
        """Wait until the generation passes ``generation`` (or a timeout); return it, the model's versions
        (None while the model is unloaded) and its config."""
        async with self._changed:
            await self._wait_for_change(generation)
            loaded = model in self.configs and model not in self.unloaded
            versions = sorted(self.desired.get(model, {})) if loaded else None
            return self.generation, versions, self.config(model)

    async def watch_models(self, generation: int) -> tuple[int, dict[str, str], list[str], list[str], list[str]]:
        """For the Ingress: wait as ``watch``; return the generation, the models loaded as applications of
        their own (model -> application), every model in the repository, the built models unloaded, and the
        models loaded later that scale to zero when idle."""
        async with self._changed:
            await self._wait_for_change(generation)
            on_demand = sorted(m for m in self.added if getattr(self.config(m), "scales_to_zero", False))
            return self.generation, dict(self.added), list(self.repository), sorted(self.unloaded), on_demand

    async def set_loaded(self, model: str, loaded: bool, config: ModelConfig | None = None,
                         files: dict[str, bytes] | None = None) -> int:
        """Load or unload a model on every replica (the repository API); loading re-reads the store and
        serves ``config`` when given (Triton's load with a config override), else the store's config;
        with ``files`` (Triton's ``file:`` parameters) the model is served from them instead of the store.
        Returns the generation that carries the change."""
        async with self._control:
            try:
                return await self._set_loaded(model, loaded, config, files)
            finally:
                await self._save()

    async def _set_loaded(self, model: str, loaded: bool, config: ModelConfig | None,
                          files: dict[str, bytes] | None) -> int:
        if not loaded:
            if model in self.added:
                return await self._delete(model)
            if model in self.built:
                return await self._unload_built(model)
            if model not in self.repository:
                raise unknown_model(model)
            return self.generation  # not loaded: nothing to do, as Triton
        if files:
            return await self._deploy_uploaded(model, config, files)
        if model in self.built or model in self.added:
            return await self._reload(model, config)
        return await self._deploy(model, config)

    async def _unload_built(self, model: str) -> int:
        self.unloaded.add(model)
        generation = await self._raise_generation()  # the Ingress replicas answer for it first
        await self._scale_down(model)
        return generation

    async def _read_store(self, method, *args):
        """A store call for the repository API: one that fails (the store unreachable: S3's client gives up
        after its timeouts) answers 503 saying so, before anything changes."""
        try:
            return await asyncio.to_thread(method, *args)
        except (ConfigError, FileNotFoundError):
            raise
        except Exception as exc:
            raise unavailable(f"the model store {self.store!r} cannot be read: "
                              f"{without_paths(f'{type(exc).__name__}: {exc}')}") from None

    async def _reload(self, model: str, config: ModelConfig | None) -> int:
        """Load a served model again: the store's newest versions, under ``config`` or the store's."""
        if model not in self.added or model in self.repository:
            await self._read_store(self.store.versions, model)  # the store answers, or nothing changes
        self.unloaded.discard(model)
        self._set_override(model, config)
        await self.poll()
        generation = await self._raise_generation()
        if model in self.scaled_down:
            await model_apps.scale_and_wait(self.app, model, self.config(model).replicas())
            self.scaled_down.discard(model)
        return generation

    async def _scale_down(self, model: str) -> None:
        """Free an unloaded built model's replicas, unless an ensemble calls it (it then answers 503 there)."""
        if model not in self.built or model in self.steps or any(model in s for s in self.ensemble_steps.values()):
            return
        if getattr(self.config(model), "autoscaling", None) is not None:
            return  # its autoscaler owns the count: idle, it shrinks to min_replicas by itself
        if await model_apps.scale_and_wait(self.app, model, 0):
            self.scaled_down.add(model)

    def _set_override(self, model: str, config: ModelConfig | None) -> None:
        if config is None:
            self.overrides.pop(model, None)
        else:
            self.overrides[model] = config

    async def _deploy(self, model: str, config: ModelConfig | None) -> int:
        """Deploy a model the application was not built with as its own application; returns once it serves.
        An ensemble's step models that are not loaded are loaded first, as Triton does."""
        check_model_name(model)
        if model not in await self._read_store(self.store.models):
            raise unknown_model(model, detail="it is not in the repository")
        try:
            stored = await self._read_store(self.store.config, model)
        except ConfigError as exc:
            raise invalid(f"model '{model}' cannot be loaded: {exc}") from None
        served = config or stored
        for field in served.ignored():
            logger.warning("model '%s' is served without %s", model, field)
        if is_ensemble(served):
            steps = await self._load_steps(served)
            self.ensemble_steps[model] = set(steps)
            application = model_apps.ensemble_application(served, steps, self.args, self.statistics)
        else:
            self.configs[model] = stored
            self._set_override(model, config)
            await self.poll()
            application = model_apps.model_application(served, self.store, self.args, self.statistics, self.handle)
        return await self._start(model, application)

    async def _deploy_uploaded(self, model: str, config: ModelConfig | None, files: dict[str, bytes]) -> int:
        """Serve a model from the files a load carried, as its own application; it does not follow the store.
        A model loaded this way before is replaced."""
        if config is None:
            raise invalid(f"a load of '{model}' with files needs the 'config' parameter too, as Triton")
        if model in self.built:
            raise invalid(f"model '{model}' is served by the application itself; a load with files needs a model "
                          "it was not built with")
        source = UploadedModel(model, config, files)
        self.uploads.check_room(model, source)
        if model in self.added:
            await self._delete(model)
        await asyncio.to_thread(source.publish)
        self.uploads.add(model, source)
        return await self._start(model, model_apps.model_application(config, source, self.args, self.statistics,
                                                                     None))

    async def _start(self, model: str, application: Application) -> int:
        """Deploy a model's own application; returns the generation that serves it, or raises why it cannot
        serve (leaving nothing behind, as Triton keeps nothing of a failed load)."""
        app = await asyncio.to_thread(model_apps.deploy, self.app, model, application)
        try:
            await model_apps.until_serving(app, model)
        except InferenceError:
            self._forget(model)
            await model_apps.delete_and_wait(app)
            raise
        self.added[model] = app
        logger.info("model '%s' loaded as application '%s'", model, app)
        return await self._raise_generation()

    async def _load_steps(self, config: ModelConfig) -> dict[str, DeploymentHandle]:
        """Handles of an ensemble's step models, loading those not loaded yet; its graph is checked first."""
        try:
            steps = sorted({step.model_name for step in scheduling(config, config.name).step})
            check_graph(config, f"{config.name}/config", set(steps))
        except ConfigError as exc:
            raise invalid(f"model '{config.name}' cannot be loaded: {exc}") from None
        own = await asyncio.to_thread(model_apps.deployments, self.app)
        for step in steps:
            if step in self.unloaded:
                self.unloaded.discard(step)
                generation = await self._raise_generation()
                if step in self.scaled_down:
                    await model_apps.scale_and_wait(self.app, step, self.configs[step].replicas())
                    self.scaled_down.discard(step)
                await self._until_followed(step, generation)
            elif step not in own and step not in self.added:
                await self._deploy(step, None)
        return {step: serve.get_deployment_handle(step, app_name=self.added.get(step, self.app)) for step in steps}

    async def _until_followed(self, model: str, generation: int) -> None:
        """Wait (boundedly) until a model of the application itself has followed ``generation``."""
        handle = serve.get_deployment_handle(model, app_name=self.app)
        deadline = time.monotonic() + model_apps.DEPLOY_TIMEOUT_S
        while await handle.followed.remote() < generation and time.monotonic() < deadline:
            await asyncio.sleep(model_apps.STATUS_INTERVAL_S)

    async def _delete(self, model: str) -> int:
        """Delete a model's own application; returns once it is gone (its Ray resources are free)."""
        app = self.added.pop(model)
        self._forget(model)
        generation = await self._raise_generation()  # the Ingress replicas stop routing to it first
        await model_apps.delete_and_wait(app)
        logger.info("model '%s' unloaded: application '%s' deleted", model, app)
        return generation

    def _forget(self, model: str) -> None:
        for state in (self.configs, self.overrides, self.desired, self.errors, self.ensemble_steps):
            state.pop(model, None)
        self.uploads.forget(model)  # an uploaded model's files go too, but those another upload holds

    def status(self) -> dict[str, Any]:
        return {"generation": self.generation, "errors": dict(self.errors), "unloaded": sorted(self.unloaded),
                "desired": {m: sorted(v) for m, v in self.desired.items()}, "overridden": sorted(self.overrides),
                "added": dict(self.added), "scaled_down": sorted(self.scaled_down)}

    async def __del__(self):
        """When the application itself is deleted, its models' own applications and its saved state go with
        it."""
        if getattr(self, "_poller", None) is not None:
            self._poller.cancel()
        try:
            if (await asyncio.to_thread(model_apps.state, self.app))[0] == "DELETING":
                for app in getattr(self, "added", {}).values():
                    await asyncio.to_thread(model_apps.delete, app)
                await asyncio.to_thread(self.saved.delete)
                await asyncio.to_thread(SavedState(self.app, SETTINGS_PREFIX).delete)  # the collector's
        except Exception as exc:
            logger.warning("could not delete the models' applications %s: %r", sorted(self.added.values()), exc)
