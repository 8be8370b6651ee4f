"""ModelStoreSync: one per application, it watches the model store and pushes version changes to replicas.

It polls the store (every ``poll_interval_s``) and keeps the desired state: for each model, the versions
its version policy selects, each with a fingerprint of its files. Whenever that state changes it raises a
generation number; every Model replica long-polls ``watch`` and, on a new generation, loads the new
versions beside the old ones, warms them up, swaps, and unloads the old (``ModelRunner.update``). A store
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

from deployments.config import VersionPolicy

logger = logging.getLogger(__name__)

#: How long a replica's ``watch`` call waits for a change before it returns and asks again.
WATCH_TIMEOUT_S = 30.0


@serve.deployment(num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
class ModelStoreSync:
    async def __init__(self, store: Any, policies: dict[str, VersionPolicy], poll_interval_s: float):
        self.store = store
        self.policies = policies
        self.poll_interval_s = poll_interval_s
        self.generation = 0
        self.desired: dict[str, dict[int, str]] = {}  # model -> {version: fingerprint}
        self.errors: dict[str, str] = {}
        self.unloaded: set[str] = set()  # unloaded through the repository API (Triton's explicit control)
        self._changed = asyncio.Condition()
        await self.poll()
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever()) if poll_interval_s > 0 else None

    def _scan(self) -> tuple[dict[str, dict[int, str]], dict[str, str]]:
        desired, errors = dict(self.desired), {}
        for model, policy in self.policies.items():
            try:
                versions = policy.select(self.store.versions(model))
                desired[model] = {v: self.store.fingerprint(model, v) for v in versions}
            except Exception as exc:  # keep the last known state: serving goes on
                errors[model] = f"cannot read the store: {exc}"
        return desired, errors

    async def poll(self) -> int:
        """Read the store once; returns the generation (raised if anything changed)."""
        desired, errors = await asyncio.to_thread(self._scan)
        for model, error in errors.items():
            if self.errors.get(model) != error:
                logger.warning("model '%s': %s", model, error)
        self.errors = errors
        if desired != self.desired:
            async with self._changed:
                self.desired = desired
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

    async def watch(self, model: str, generation: int) -> tuple[int, list[int] | None]:
        """Wait until the generation passes ``generation`` (or a timeout); return it and the model's versions,
        or None while the model is unloaded."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.generation > generation), WATCH_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass
            if model in self.unloaded:
                return self.generation, None
            return self.generation, sorted(self.desired.get(model, {}))

    async def set_loaded(self, model: str, loaded: bool) -> int:
        """Load or unload a model on every replica (the repository API); loading also re-reads the store."""
        if model not in self.policies:
            raise ValueError(f"model '{model}' is not served by this application")
        if loaded:
            self.unloaded.discard(model)
            await self.poll()
        else:
            self.unloaded.add(model)
        async with self._changed:
            self.generation += 1
            self._changed.notify_all()
        return self.generation

    def status(self) -> dict[str, Any]:
        return {"generation": self.generation, "errors": dict(self.errors), "unloaded": sorted(self.unloaded),
                "desired": {m: sorted(v) for m, v in self.desired.items()}}
