"""Every replica process follows the application's log and trace settings, which the statistics collector
keeps: one long poll per process (``watch_settings``) that answers when they change, applied at once."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from deployments.observability import log_settings
from deployments.observability.trace_settings import TraceSettings
from deployments.observability.tracing import tracer_for

logger = logging.getLogger(__name__)

#: How long one watch of the settings waits for a change before asking again.
WATCH_S = 30.0
_following: set[int] = set()  # the event loops (one per replica process) that follow the settings


def follow(collector: Any) -> None:
    """Follow the settings in this process (once, whichever of its services asks first): ``collector`` is
    the handle of the StatisticsCollector; None follows nothing. Call it on the replica's event loop."""
    loop = asyncio.get_running_loop()
    if collector is None or id(loop) in _following:
        return
    _following.add(id(loop))
    log_settings.log_through("ray.serve")
    loop.create_task(_follow(collector))


async def catch_up(collector: Any) -> None:
    """Apply the settings in this process now, without waiting for the watch to answer: after this process
    changed them, its next request must see them (as Triton's do)."""
    _, settings = await collector.watch_settings.remote(-1, 0)
    _apply(settings, tracer_for(collector))


def _apply(settings: dict[str, Any], tracer) -> None:
    log_settings.apply(settings["log"])
    tracer.settings = TraceSettings(settings["trace"])


async def _follow(collector: Any) -> None:
    generation, tracer = -1, tracer_for(collector)
    while True:
        try:
            generation, settings = await collector.watch_settings.remote(generation, WATCH_S)
            _apply(settings, tracer)
        except Exception as exc:  # the collector restarting: keep the settings, ask again shortly
            logger.warning("following the log and trace settings failed: %r", exc)
            await asyncio.sleep(1.0)
