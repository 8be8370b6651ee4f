"""Batching: the dynamic batcher that forms batches, and the arithmetic of which requests can run
together, how to merge them and how to split results.

Requests run together when every input has the same datatype and the same shape past the batch dim;
they are concatenated along the batch dim and the outputs are split back by row counts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import numpy as np

Tensors = dict[str, np.ndarray]


def signature(inputs: Tensors) -> Hashable:
    """What must agree for two requests to share a batch: names, dtypes and non-batch shapes."""
    return tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items()))


def plan_batches(keys: Sequence[Hashable], rows: Sequence[int], max_rows: int) -> list[list[int]]:
    """Group request indices by key, then cut each group into runs of at most ``max_rows`` rows.

    Order is kept within a group; a single request larger than ``max_rows`` runs alone.
    """
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    batches: list[list[int]] = []
    for members in groups.values():
        current: list[int] = []
        current_rows = 0
        for index in members:
            if current and current_rows + rows[index] > max_rows:
                batches.append(current)
                current, current_rows = [], 0
            current.append(index)
            current_rows += rows[index]
        batches.append(current)
    return batches


def merge(requests: Sequence[Tensors]) -> Tensors:
    """Concatenate requests along the batch dim (one request is passed through without a copy)."""
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split(outputs: Tensors, rows: Sequence[int]) -> list[Tensors]:
    """Split batched outputs back into one dict per request by its row count."""
    if len(rows) == 1:
        return [outputs]
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output '{name}' has shape {list(array.shape)}, expected a batch dim of {total} rows"
            )
    cuts = np.cumsum(rows)[:-1]
    parts: list[Tensors] = [{} for _ in rows]
    for name, array in outputs.items():
        for part, piece in zip(parts, np.split(array, cuts)):
            part[name] = piece
    return parts


class DynamicBatcher:
    """Triton's dynamic batcher for one replica: requests queue while a batch runs; when the model is
    free, the next batch takes queued requests in arrival order up to ``max_rows`` rows, first waiting
    until ``max_delay_s`` after the oldest one's arrival for more when the batch is not full.

    One batch runs at a time (the replica's executor has one thread). Serve's ``@serve.batch`` forms the
    next batch while the last one runs, so under load it cuts batches of one or two requests that then
    wait their turn; docs/architecture.md has the measurement. A request whose caller gave up still runs
    (its model version stays counted as in use until then); its result is dropped.
    """

    def __init__(self, run: Callable[[list[Any]], Awaitable[list[Any]]], max_rows: int, max_delay_s: float,
                 rows: Callable[[Any], int] = lambda item: item.rows,
                 expired: Callable[[Any], Exception | None] = lambda item: None,
                 priority: Callable[[Any], int] = lambda item: 0):
        """``expired(item)``: the error of a request that must not run any more (its queue timeout passed,
        Triton's queue policy), checked as the request leaves the queue; None to run it. ``priority(item)``:
        its level, lower first (Triton's priority levels); equal levels leave in arrival order."""
        self._run, self._rows, self._expired, self._priority = run, rows, expired, priority
        self.max_rows, self.max_delay_s = max_rows, max_delay_s
        self._queue: deque[tuple[Any, asyncio.Future, float]] = deque()
        self._queued_rows = 0
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Any) -> Any:
        """Queue one request; returns its result (or the exception its batch raised)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((item, future, loop.time()))
        self._queued_rows += self._rows(item)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            deadline = self._queue[0][2] + self.max_delay_s
            while self._queued_rows < self.max_rows and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:  # every request taken had expired
                continue
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as exc:  # the batch fails, the batcher goes on
                results = [exc] * len(batch)
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def _take(self) -> list[tuple[Any, asyncio.Future]]:
        batch, rows = [], 0
        levels = [self._priority(entry[0]) for entry in self._queue]
        if any(level != levels[0] for level in levels):  # highest level first, arrival order within one
            entries = list(self._queue)
            order = sorted(range(len(entries)), key=lambda i: (levels[i], entries[i][2]))
            self._queue = deque(entries[i] for i in order)
        while self._queue:
            size = self._rows(self._queue[0][0])
            if batch and rows + size > self.max_rows:
                break
            item, future, _ = self._queue.popleft()
            self._queued_rows -= size
            error = self._expired(item)
            if error is not None:
                if not future.done():
                    future.set_result(error)
                continue
            batch.append((item, future))
            rows += size
        return batch
