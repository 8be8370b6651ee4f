"""ModelStoreSync: one per application, it watches the model store and pushes version changes to replicas.

It polls the store (every ``poll_interval_s``) and keeps the desired state: for each model, its config (the
store's, or one given with a repository load) and the versions its version policy selects, each with a
fingerprint of its files. Whenever that state changes it raises a generation number; every ModelService
long-polls ``watch`` and, on a new generation, loads the new versions (or every version, when the config
changed) beside the old ones, warms them up, swaps, and unloads the old (``ModelRunner.update``). A store
that cannot be read leaves the desired state as it was, so serving is not disturbed; the error is kept
for ``status`` and the next poll tries again.

It is a Serve deployment (one replica) rather than a bare detached actor: Serve starts it with the
application, restarts it if it dies, and passes its handle to the models with ``.bind()``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from deployments.config import ModelConfig

logger = logging.getLogger(__name__)

#: How long a replica's ``watch`` call waits for a change before it returns and asks again.
WATCH_TIMEOUT_S = 30.0


@serve.deployment(num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
class ModelStoreSync:
    async def __init__(self, store: Any, configs: dict[str, ModelConfig], poll_interval_s: float):
        """``configs``: the models this sync serves, with their configs as the application was built."""
        self.store = store
        self.configs = dict(configs)  # model -> the store's config, as last read
        self.overrides: dict[str, ModelConfig] = {}  # model -> config given with a repository load
        self.poll_interval_s = poll_interval_s
        self.generation = 0
        self.desired: dict[str, dict[int, str]] = {}  # model -> {version: fingerprint}
        self.errors: dict[str, str] = {}
        self.unloaded: set[str] = set()  # unloaded through the repository API (Triton's explicit control)
        self._changed = asyncio.Condition()
        await self.poll()
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever()) if poll_interval_s > 0 else None

    def config(self, model: str) -> ModelConfig:
        """The config a model is served with: the one given with its last load, else the store's."""
        return self.overrides.get(model) or self.configs[model]

    def _scan(self) -> tuple[dict[str, dict[int, str]], dict[str, ModelConfig], dict[str, str]]:
        desired, configs, errors = dict(self.desired), dict(self.configs), {}
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
        return desired, configs, errors

    async def poll(self) -> int:
        """Read the store once; returns the generation (raised if anything changed)."""
        desired, configs, errors = await asyncio.to_thread(self._scan)
        for model, error in errors.items():
            if self.errors.get(model) != error:
                logger.warning("model '%s': %s", model, error)
        self.errors = errors
        if desired != self.desired or configs != self.configs:
            async with self._changed:
                self.desired, self.configs = desired, configs
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

    async def watch(self, model: str, generation: int) -> tuple[int, list[int] | None, ModelConfig]:
        """Wait until the generation passes ``generation`` (or a timeout); return it, the model's versions
        (None while the model is unloaded) and its config."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.generation > generation), WATCH_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass
            versions = None if model in self.unloaded else sorted(self.desired.get(model, {}))
            return self.generation, versions, self.config(model)

    async def set_loaded(self, model: str, loaded: bool, config: ModelConfig | None = None) -> int:
        """Load or unload a model on every replica (the repository API); loading re-reads the store and
        serves ``config`` when given (Triton's load with a config override), else the store's config.
        Returns the generation that carries the change."""
        if model not in self.configs:
            raise ValueError(f"model '{model}' is not served by this application")
        if loaded:
            self.unloaded.discard(model)
            if config is None:
                self.overrides.pop(model, None)
            else:
                self.overrides[model] = config
            await self.poll()
        else:
            self.unloaded.add(model)
        async with self._changed:
            self.generation += 1
            self._changed.notify_all()
        return self.generation

    def status(self) -> dict[str, Any]:
        return {"generation": self.generation, "errors": dict(self.errors), "unloaded": sorted(self.unloaded),
                "desired": {m: sorted(v) for m, v in self.desired.items()}, "overridden": sorted(self.overrides)}
