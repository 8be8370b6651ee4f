"""The repository API's half of ModelStoreSync (Triton's model control: load and unload), as a base class of
the sync deployment, which owns the state it changes.

A model the application was built with is unloaded and loaded inside its replicas, which are scaled to zero
and back; a model it was not built with is deployed as an application of its own on load
(``cluster/repository/model_apps.py`` talks to Serve's controller for it) and deleted on unload; a load with
files serves them instead of the store. One load or unload runs at a time (``_control``), and what it
changed is saved for a restarted sync (``_save``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from cluster.repository import model_apps
from cluster.repository.paths import check_model_name
from cluster.repository.uploaded import UploadedModel
from pydantic import ValidationError

from deployments.config.model_config import ConfigError, ModelConfig
from deployments.config.operations import Traffic
from deployments.errors import InferenceError, invalid, unavailable, unknown_model, without_paths
from ensembles.graph import check_graph, is_ensemble, scheduling

logger = logging.getLogger(__name__)


class ModelControl:
    """Loads and unloads models for the repository API; mixed into ModelStoreSync, whose state it uses (the
    store, the configs and overrides, the generation, the models added and unloaded)."""

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

    async def traffic(self, model: str, change: dict | None = None) -> tuple[int, dict | None]:
        """A model's traffic split: the one served (None: none), after ``change`` when given (the repository
        API's ``traffic`` extension): ``{"weights": {version: weight}, "sticky_by": ...}`` replaces the split
        of the model's config until ``{"weights": null}`` returns to it. Versions must be among those the
        model serves (its version policy's). Returns the generation that carries it, and the split."""
        async with self._control:
            if self.config(model) is None or is_ensemble(self.config(model)):
                raise unknown_model(model, detail="no plain model of that name is served (ensembles have no "
                                                  "versions of their own)")
            if change is None:
                return self.generation, dumped(self.config(model).traffic)
            if not isinstance(change, dict):
                raise invalid("a traffic change must be a JSON object")
            if change.get("weights", ...) is None:
                self.splits.pop(model, None)
            else:
                try:
                    split = Traffic.model_validate(change)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    raise invalid(f"traffic of '{model}': {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
                served = sorted(self.desired.get(model, {}))
                unknown = sorted(set(split.weights) - set(served))
                if unknown:
                    raise invalid(f"traffic of '{model}': version {unknown[0]} is not served (its version policy "
                                  f"selects {served})")
                self.splits[model] = split
            await self._save()
            return await self._raise_generation(), dumped(self.config(model).traffic)

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
        for state in (self.configs, self.overrides, self.splits, self.desired, self.errors, self.ensemble_steps):
            state.pop(model, None)
        self.uploads.forget(model)  # an uploaded model's files go too, but those another upload holds


def dumped(traffic: Traffic | None) -> dict | None:
    """A traffic split as JSON (versions as strings), None without one."""
    return None if traffic is None else {"weights": {str(v): w for v, w in traffic.weights.items()},
                                         "sticky_by": traffic.sticky_by}
