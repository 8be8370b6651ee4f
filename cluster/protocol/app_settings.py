"""The application's run-time settings, kept by the statistics collector: Triton's log settings (logging
extension) and trace settings (trace extension, global and per model), with the trace output they steer.

Every replica process watches them (``watch``, a long poll: ``deployments/observability/settings_follower.py``) and
applies a change at once. They are saved in Ray's key-value store (``settings:<app>``), so a restarted
collector keeps what clients set; the sync deletes the record with the application.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cluster.protocol.trace_output import TraceOutput, resolve
from cluster.repository.control_state import SETTINGS_PREFIX, SavedState
from deployments.errors import InferenceError, invalid
from deployments.observability.log_settings import DEFAULTS as LOG_DEFAULTS, updated as updated_log_settings
from deployments.observability.trace_settings import TraceSettings

logger = logging.getLogger(__name__)


class AppSettings:
    """Log and trace settings with a generation that every change moves on; all on one event loop."""

    def __init__(self, app: str, trace_dir: str):
        self._saved = SavedState(app, SETTINGS_PREFIX)
        self._trace_dir = trace_dir
        self.log = dict(LOG_DEFAULTS)
        self.trace = TraceSettings()
        self.output = TraceOutput()
        self.generation = 0
        self._changed = asyncio.Event()
        self._read: asyncio.Future | None = None  # the saved record, read when first needed

    async def _loaded(self) -> None:
        if self._read is None:
            self._read = asyncio.ensure_future(asyncio.to_thread(self._saved.read))
            saved = await self._read
            self.log.update(saved.get("log", {}))
            self.trace = TraceSettings(saved.get("trace"))
            saved_file = self.trace.of(None)["trace_file"]
            try:  # saved by an earlier server, perhaps under looser rules (a folder below the trace folder)
                resolve(self._trace_dir, saved_file)
            except InferenceError as error:
                logger.warning("the saved trace_file is dropped: %s", error.message)
                self.trace.update(None, {"trace_file": None})
        await self._read

    async def _changed_now(self) -> None:
        """Save, and wake every watcher."""
        await asyncio.to_thread(self._saved.write, {"log": self.log, "trace": self.trace.to_dict()})
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def log_settings(self, changes: dict[str, Any] | None) -> dict[str, Any]:
        await self._loaded()
        if changes:
            settings = updated_log_settings(self.log, changes)  # checked first: a bad one changes nothing
            if settings != self.log:
                self.log = settings
                await self._changed_now()
        return dict(self.log)

    async def trace_settings(self, model: str | None, changes: dict[str, Any] | None) -> dict[str, Any]:
        await self._loaded()
        if changes:
            if "trace_file" in changes and changes["trace_file"] is not None:
                changes = {**changes, "trace_file": resolve(self._trace_dir, changes["trace_file"])}
            if model and changes.get("trace_file") is not None:
                raise invalid(f"model '{model}': trace_file is one per application (set it globally); a "
                              "model's settings may change its level, rate, count and log_frequency")
            trace = TraceSettings(self.trace.to_dict())
            trace.update(model, changes)
            if trace.to_dict() != self.trace.to_dict():
                self.trace = trace
                await self._changed_now()
        return self.trace.of(model)

    async def watch(self, generation: int, timeout_s: float) -> tuple[int, dict[str, Any]]:
        await self._loaded()
        if generation == self.generation:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout_s)
            except asyncio.TimeoutError:
                pass
        return self.generation, {"log": dict(self.log), "trace": self.trace.to_dict()}

    async def spans(self, rows: list[dict[str, Any]]) -> None:
        await self._loaded()
        if self.output.write(rows, self.trace):  # a trace count moved: save and push it
            await self._changed_now()
