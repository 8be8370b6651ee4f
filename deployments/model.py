"""The Model deployment: one Serve deployment per model, named after it, with dynamic batching.

Requests are checked before they join a batch (a bad one fails alone); ``@serve.batch`` collects them
for up to ``max_queue_delay_microseconds``, counting rows (not requests) against the batch size; the
batch runs on one executor thread so the replica keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray import serve

from deployments.backends import Tensors
from deployments.config import ModelConfig
from deployments.runner import ModelRunner, Pending, VersionSource
from deployments.served import ServedModel
from deployments.statistics import StatisticsReporter

logger = logging.getLogger(__name__)

UNLOADED = "unloaded through the repository API"


def _rows(pending: list[Pending]) -> int:
    return sum(p.rows for p in pending)


def batch_limits(config: ModelConfig) -> tuple[int, float]:
    """Rows per batch and the longest wait for one, from the config's dynamic_batching.

    With preferred sizes, batches are cut at the largest one, as Triton aims for preferred sizes.
    """
    batching = config.dynamic_batching
    size = max(batching.preferred_batch_size, default=config.max_batch_size)
    return size, batching.max_queue_delay_microseconds / 1e6


@serve.deployment
class Model(ServedModel):
    """Serves every loaded version of one model; call ``infer`` through a handle."""

    async def __init__(self, config: ModelConfig, source: VersionSource, statistics: Any = None, sync: Any = None):
        """``statistics`` and ``sync`` are the handles of the application's StatisticsCollector and
        ModelStoreSync (either may be None)."""
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.runner = ModelRunner(config, source, device)
        self.runner.load()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ric-{config.name}")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ric-load-{config.name}")
        replica = serve.get_replica_context().replica_id.unique_id
        self._reporter = StatisticsReporter(statistics, config.name, replica, self._snapshot)
        self._configure_batching()
        self._follower = asyncio.get_running_loop().create_task(self._follow(sync)) if sync is not None else None

    def _configure_batching(self) -> None:
        self._dynamic = self.runner.ready and self.runner.config.dynamic_batching is not None
        if self._dynamic:
            size, wait_s = batch_limits(self.runner.config)
            self._run_batched.set_max_batch_size(size)
            self._run_batched.set_batch_wait_timeout_s(wait_s)

    async def _follow(self, sync: Any) -> None:
        """Apply the versions the sync deployment pushes: load beside, warm up, swap, unload the old."""
        generation, loop = 0, asyncio.get_running_loop()
        while True:
            try:
                generation, versions = await sync.watch.remote(self.runner.name, generation)
            except Exception as exc:  # the sync restarting: serving goes on, ask again shortly
                logger.warning("model '%s': version watch failed: %r", self.runner.name, exc)
                await asyncio.sleep(1.0)
                continue
            if versions is None:  # unloaded through the repository API
                if self.runner.backends:
                    await loop.run_in_executor(self._loader, self.runner.unload_all, UNLOADED)
                continue
            served = sorted(self.runner.backends)
            failed = [v for v in versions if self.runner.states.get(v) and self.runner.states[v].state != "READY"]
            if versions != served or failed or not served:
                await loop.run_in_executor(self._loader, self.runner.update, versions)
                self._configure_batching()

    async def infer_versioned(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None,
    ) -> tuple[int, Tensors]:
        """Like ``infer``, also returning the version that answered (for the protocol's model_version)."""
        try:
            pending = self.runner.prepare(inputs, outputs, version, parameters)
            if self._dynamic:
                result = await self._run_batched(pending)
            else:
                loop = asyncio.get_running_loop()
                (result,) = await loop.run_in_executor(self._executor, self.runner.execute, [pending])
        finally:
            self._reporter.schedule()
        if isinstance(result, Exception):
            raise result
        return pending.version, result

    async def _snapshot(self):
        # Copied on the executor thread, which is the one that updates the statistics.
        return await asyncio.get_running_loop().run_in_executor(self._executor, copy.deepcopy, self.runner.stats)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0, batch_size_fn=_rows)
    async def _run_batched(self, pending: list[Pending]) -> list[Tensors | Exception]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.runner.execute, pending)

    def ready(self) -> bool:
        return self.runner.ready

    def metadata(self) -> dict[str, Any]:
        return self.runner.metadata()

    def model_config(self) -> dict[str, Any]:
        """The completed config, in Triton's JSON form."""
        return self.runner.config.to_dict()

    def index(self) -> list[dict[str, str]]:
        return self.runner.index()

    def statistics(self) -> dict[int, dict[str, Any]]:
        """This replica's statistics per version, in Triton's form (the collector sums all replicas)."""
        return {v: stats.to_triton(self.runner.name, v) for v, stats in self.runner.stats.items()}

    def __del__(self):
        if self._follower is not None:
            self._follower.cancel()
        self.runner.unload()
        self._executor.shutdown(wait=False)
        self._loader.shutdown(wait=False)
