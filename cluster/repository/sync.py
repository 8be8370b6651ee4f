"""ModelStoreSync: one per application, it watches the model store and pushes version changes to replicas.

It polls the store (every ``poll_interval_s``) and keeps the desired state: for each model, its config (the
store's, or one given with a repository load) and the versions its version policy selects, each with a
fingerprint of its files. Whenever that state changes it raises a generation number; every ModelService
long-polls ``watch`` and, on a new generation, loads the new versions (or every version, when the config
changed) beside the old ones, warms them up, swaps, and unloads the old (``ModelRunner.update``). A store
that cannot be read leaves the desired state as it was, so serving is not disturbed; the error is kept
for ``status`` and the next poll tries again.

It also answers the repository API (load and unload, in its base class ``ModelControl``,
``cluster/repository/model_control.py``). Every Ingress replica long-polls ``watch_models`` to learn the
models loaded as applications of their own, the unloaded ones and the repository's listing.

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

from cluster.repository import model_apps
from cluster.repository.control_state import DRIFT_PREFIX, SETTINGS_PREFIX, SavedState, Uploads
from cluster.repository.model_control import ModelControl, dumped
from deployments.config.model_config import ModelConfig, parse_yaml
from deployments.config.operations import Traffic
from ensembles.graph import is_ensemble, scheduling

logger = logging.getLogger(__name__)

#: How long a replica's ``watch`` call waits for a change before it returns and asks again. Short, because
#: a sync replica that stops waits for its open watches before its ``__del__`` runs.
WATCH_TIMEOUT_S = 5.0


@serve.deployment(num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
class ModelStoreSync(ModelControl):
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
        self.splits: dict[str, Traffic] = {}  # model -> traffic split set through the repository API
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
        self.splits = {model: Traffic.model_validate(split) for model, split in state.get("traffic", {}).items()
                        if model in self.built or model in self.added}
        self.unloaded |= set(state.get("unloaded", [])) & self.built
        self.uploads.restore(state.get("uploads", {}), set(self.added))
        logger.info("restored the repository API's changes: overrides %s, unloaded %s",
                    sorted(self.overrides), sorted(self.unloaded))

    async def _save(self) -> None:
        """Keep what users changed through the repository API where a restarted replica finds it."""
        state = {"overrides": {m: c.to_dict() for m, c in self.overrides.items()}, "unloaded": sorted(self.unloaded),
                 "uploads": self.uploads.files, "traffic": {m: t.model_dump() for m, t in self.splits.items()}}
        await asyncio.to_thread(self.saved.write, state)

    def config(self, model: str) -> ModelConfig | None:
        """The config a model is served with: the one given with its last load, else the store's; with the
        traffic split set through the repository API, if any."""
        config = self.overrides.get(model) or self.configs.get(model)
        if config is not None and model in self.splits:
            config = config.model_copy(update={"traffic": self.splits[model]})
        return config

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

    def status(self) -> dict[str, Any]:
        return {"generation": self.generation, "errors": dict(self.errors), "unloaded": sorted(self.unloaded),
                "desired": {m: sorted(v) for m, v in self.desired.items()}, "overridden": sorted(self.overrides),
                "traffic": {m: dumped(self.config(m).traffic) for m in self.configs if self.config(m).traffic},
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
                for prefix in (SETTINGS_PREFIX, DRIFT_PREFIX):  # the collector's
                    await asyncio.to_thread(SavedState(self.app, prefix).delete)
        except Exception as exc:
            logger.warning("could not delete the models' applications %s: %r", sorted(self.added.values()), exc)
