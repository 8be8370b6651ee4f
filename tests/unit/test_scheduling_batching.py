"""The dynamic batcher: batches form while the model is busy, in rows, in order, within the delay."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from deployments.scheduling.batching import DynamicBatcher


@dataclass
class Item:
    name: str
    rows: int = 1


class Model:
    """A model whose batches finish when the test says so; records every batch it was given."""

    def __init__(self):
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()

    async def run(self, items):
        self.batches.append([item.name for item in items])
        await self.release.wait()
        if any(item.name == "bad" for item in items):
            raise ValueError("batch failed")
        return [f"{item.name}!" for item in items]


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_queued_behind_a_running_batch_form_the_next_one():
    async def scenario():
        model = Model()
        batcher = DynamicBatcher(model.run, max_rows=8, max_delay_s=0.0)
        first = asyncio.ensure_future(batcher.submit(Item("a")))
        await settle()
        rest = [asyncio.ensure_future(batcher.submit(Item(name))) for name in "bcdef"]
        await settle()
        model.release.set()
        return model.batches, await first, await asyncio.gather(*rest)

    batches, first, rest = asyncio.run(scenario())
    assert batches == [["a"], ["b", "c", "d", "e", "f"]]
    assert first == "a!" and rest == ["b!", "c!", "d!", "e!", "f!"]


def test_batches_are_cut_by_rows_in_arrival_order():
    async def scenario():
        model = Model()
        model.release.set()
        batcher = DynamicBatcher(model.run, max_rows=4, max_delay_s=0.05)
        sizes = {"a": 3, "b": 2, "c": 1, "d": 1, "e": 6}
        results = await asyncio.gather(*(batcher.submit(Item(n, r)) for n, r in sizes.items()))
        return model.batches, results

    batches, results = asyncio.run(scenario())
    assert batches == [["a"], ["b", "c", "d"], ["e"]]  # 3 | 2+1+1 | 6 alone (larger than the limit)
    assert results == ["a!", "b!", "c!", "d!", "e!"]


def test_an_idle_model_waits_up_to_the_delay_for_more():
    async def scenario():
        model = Model()
        model.release.set()
        batcher = DynamicBatcher(model.run, max_rows=8, max_delay_s=0.2)
        first = asyncio.ensure_future(batcher.submit(Item("a")))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(Item("b")))
        await asyncio.gather(first, second)
        full = DynamicBatcher(model.run, max_rows=2, max_delay_s=30.0)  # a full batch does not wait
        await asyncio.wait_for(asyncio.gather(full.submit(Item("c")), full.submit(Item("d"))), timeout=5)
        return model.batches

    assert asyncio.run(scenario()) == [["a", "b"], ["c", "d"]]


def test_a_failing_batch_fails_only_its_requests_and_the_batcher_goes_on():
    async def scenario():
        model = Model()
        model.release.set()
        batcher = DynamicBatcher(model.run, max_rows=2, max_delay_s=0.0)
        bad = await asyncio.gather(batcher.submit(Item("bad")), batcher.submit(Item("x")))
        good = await batcher.submit(Item("y"))
        return bad, good

    bad, good = asyncio.run(scenario())
    assert all(isinstance(result, ValueError) for result in bad)
    assert good == "y!"


def test_requests_expired_in_the_queue_answer_their_error_and_do_not_run():
    async def scenario():
        model = Model()
        batcher = DynamicBatcher(model.run, max_rows=1, max_delay_s=0.0,
                                 expired=lambda item: TimeoutError(item.name) if item.name.startswith("late") else None)
        first = asyncio.ensure_future(batcher.submit(Item("first")))
        await settle()  # "first" runs; the others queue behind it
        rest = [asyncio.ensure_future(batcher.submit(Item(name))) for name in ("late1", "next", "late2")]
        await settle()
        model.release.set()
        return await first, await asyncio.gather(*rest), model.batches

    first, rest, batches = asyncio.run(scenario())
    assert first == "first!" and rest[1] == "next!"
    assert isinstance(rest[0], TimeoutError) and isinstance(rest[2], TimeoutError)
    assert batches == [["first"], ["next"]]


def test_higher_priority_requests_leave_the_queue_first():
    """Triton's priority levels: level 1 before 2 before 3, arrival order within a level; a request past its
    DELAY timeout is put last (its priority function says so)."""
    async def scenario():
        model = Model()
        levels = {"first": 1, "low1": 3, "mid": 2, "high": 1, "low2": 3, "delayed": 4}  # 4: past its delay
        batcher = DynamicBatcher(model.run, max_rows=2, max_delay_s=0.0, priority=lambda item: levels[item.name])
        first = asyncio.ensure_future(batcher.submit(Item("first")))
        await settle()  # "first" runs; the others queue behind it
        rest = [asyncio.ensure_future(batcher.submit(Item(name))) for name in ("delayed", "low1", "mid", "high", "low2")]
        await settle()
        model.release.set()
        await asyncio.gather(first, *rest)
        return model.batches

    assert asyncio.run(scenario()) == [["first"], ["high", "mid"], ["low1", "low2"], ["delayed"]]
