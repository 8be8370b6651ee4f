"""Shadow traffic: a copy of each answered request goes to a candidate, whose answer is compared and counted,
never returned.

The copy is sent once the model has answered its client, as a request of the model's own replica through
its BLS calls (``deployments.serving.bls.ModelCalls``: in process when the candidate is served here, through
its handle otherwise), so the candidate batches, versions and counts it as any request. Copies waiting or
running are at most ``queue_size``; one more is dropped and counted, so a slow or failing candidate costs the
model nothing but the copy's CPU. The copy carries ``SHADOW_CALLER`` among its callers, so the candidate
does not shadow (or log) it again.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from typing import Awaitable, Callable

import numpy as np

from deployments.backends import Tensors
from deployments.backends.bls import BlsCall
from deployments.config.operations import Shadow
from deployments.observability.statistics import ShadowStatistics

logger = logging.getLogger(__name__)

#: The caller a shadow copy names (no model can have this name), so that its answer is not shadowed again.
SHADOW_CALLER = "<shadow>"
#: A copy not answered within this long counts as failed and leaves the candidate's queue (copies queue behind
#: every client request, so under sustained load they would otherwise hold a request slot for long).
COPY_TIMEOUT_S = 10.0
#: Answers of more bytes than this are compared on a worker thread, off the replica's event loop.
COMPARE_ON_LOOP_BYTES = 1 << 16


def candidate_label(model: str, shadow: Shadow) -> str:
    """The candidate as the statistics name it: ``model:version`` (version empty: the newest)."""
    return f"{shadow.model or model}:{shadow.version or ''}"


class ShadowCopies:
    """The shadow copies of one model in one replica."""

    def __init__(self, model: str, run: Callable[[BlsCall], Awaitable[list]],
                 counts: Callable[[int, str], ShadowStatistics], counted: Callable[[], None] = lambda: None):
        """``run(call)``: the call's responses (``ModelCalls.run``); ``counts(version, candidate)``: the
        statistics of the copies of that version's requests (kept on the event loop); ``counted()`` is
        called after each copy (the replica then reports its statistics)."""
        self._model, self._run, self._counts, self._counted = model, run, counts, counted
        self._held = 0
        self._tasks: set[asyncio.Task] = set()

    def offer(self, shadow: Shadow, version: int, inputs: Tensors, outputs: list[str] | None,
              parameters: dict | None, answer: Tensors) -> None:
        """Send a copy of an answered request to the candidate (a ``sample_rate`` share of them), unless
        ``queue_size`` copies are held."""
        if shadow.sample_rate < 1 and random.random() >= shadow.sample_rate:
            return
        counts = self._counts(version, candidate_label(self._model, shadow))
        if self._held >= shadow.queue_size:
            counts.dropped += 1
            return
        self._held += 1
        kept = {k: v for k, v in (parameters or {}).items() if k != "priority"}  # (the candidate's levels may differ)
        call = BlsCall(model=shadow.model or self._model, inputs=inputs, outputs=outputs,
                       version=str(shadow.version) if shadow.version else None, parameters=kept,
                       callers=(SHADOW_CALLER,), timeout_s=COPY_TIMEOUT_S)
        # A context of its own: not a child of the client's request (Serve would cancel it with that request);
        # a task takes the context it is created in (Python 3.10 has no create_task(context=)).
        task = contextvars.Context().run(asyncio.get_running_loop().create_task,
                                         self._copy(shadow, call, answer, counts))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _copy(self, shadow: Shadow, call: BlsCall, answer: Tensors, counts: ShadowStatistics) -> None:
        started = time.perf_counter_ns()
        try:
            responses = await self._run(call)
            took = time.perf_counter_ns() - started
            theirs = responses[-1] if responses else None
            if not isinstance(theirs, dict):
                counts.record("failed", took)
                return
            if sum(getattr(a, "nbytes", 0) for a in answer.values()) > COMPARE_ON_LOOP_BYTES:
                same = await asyncio.to_thread(agree, answer, theirs, shadow)
            else:
                same = agree(answer, theirs, shadow)
            counts.record("agreed" if same else "differed", took)
        except Exception as exc:  # never let a copy disturb the replica
            logger.warning("model '%s': shadow copy to '%s' failed: %r", self._model, call.model, exc)
            counts.record("failed", time.perf_counter_ns() - started)
        except asyncio.CancelledError:  # (the replica stopping): counted, so every copy is accounted for
            counts.record("failed", time.perf_counter_ns() - started)
            raise
        finally:
            self._held -= 1
            self._counted()

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def agree(ours: Tensors, theirs: Tensors, shadow: Shadow) -> bool:
    """Whether the candidate's answer agrees with the model's: every output the model gave, with the same
    shape, and equal values (numbers within the output's tolerance)."""
    for name, mine in ours.items():
        other = theirs.get(name)
        mine, other = np.asarray(mine), np.asarray(other) if other is not None else None
        if other is None or mine.shape != other.shape:
            return False
        tolerance = shadow.tolerances.get(name, shadow.tolerance)
        numeric = mine.dtype.kind in "biuf" and other.dtype.kind in "biuf"
        if numeric and tolerance > 0:
            if not np.allclose(mine, other, rtol=0.0, atol=tolerance, equal_nan=True):
                return False
        elif not np.array_equal(mine, other, equal_nan=numeric and mine.dtype.kind == "f"):
            return False
    return True


def shadowable(callers: tuple[str, ...]) -> bool:
    """Whether a request is a client's (or a BLS call's), not a shadow copy."""
    return SHADOW_CALLER not in callers

