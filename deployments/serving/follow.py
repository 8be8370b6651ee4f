"""How a model's copy follows the sync deployment (ModelStoreSync): each generation's versions and config
applied as they are pushed: loaded beside the served ones, warmed up, swapped in, the old unloaded."""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deployments.serving.model import ModelService

logger = logging.getLogger(__name__)

UNLOADED = "unloaded through the repository API"


async def follow(service: ModelService, sync: Any) -> None:
    """Apply what ``sync`` pushes to ``service`` until cancelled; ``service.generation`` tells the repository
    API how far this copy has followed. Loads and unloads run on the service's loader thread."""
    loop, runner = asyncio.get_running_loop(), service.runner
    while True:
        try:
            generation, versions, config = await sync.watch.remote(runner.name, service.generation)
        except Exception as exc:  # the sync restarting: serving goes on, ask again shortly
            logger.warning("model '%s': version watch failed: %r", runner.name, exc)
            await asyncio.sleep(1.0)
            continue
        if versions is None:  # unloaded through the repository API
            if runner.backends:
                await loop.run_in_executor(service.loader, runner.unload_all, UNLOADED)
        else:
            served = sorted(runner.backends)
            failed = [v for v in versions if runner.states.get(v) and runner.states[v].state != "READY"]
            if versions != served or failed or not served or config != runner.base_config:
                await loop.run_in_executor(service.loader, partial(runner.update, versions, config=config))
                service.configure_batching()
        service.generation = generation
