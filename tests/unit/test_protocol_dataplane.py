"""The data plane's calls to models are bounded: a model that never answers (no replica able to) makes
readiness false, shows in the index as UNAVAILABLE and answers 503 for its metadata, within the call
timeout, while the other models answer; an index asked before the follower had the store's listing lists
the whole store. Models are held through LocalHandle, the Ingress's own in-process handle."""

from __future__ import annotations

import asyncio

import pytest

from cluster.protocol import dataplane
from cluster.protocol.dataplane import DataPlane
from cluster.protocol.ingress import IngressOptions
from deployments.errors import ErrorCode, InferenceError
from deployments.serving.served import LocalHandle


class Answers:
    async def ready(self) -> bool:
        return True

    async def index(self) -> list[dict[str, str]]:
        return [{"name": "fine", "version": "1", "state": "READY", "reason": ""}]

    async def metadata(self) -> dict:
        return {"name": "fine", "versions": ["1"]}


class NeverAnswers:
    async def _forever(self):
        await asyncio.Event().wait()

    ready = index = metadata = model_config = _forever


def test_a_model_that_never_answers_is_reported_within_the_call_timeout(monkeypatch):
    monkeypatch.setattr(dataplane, "CALL_TIMEOUT_S", 0.2)
    plane = DataPlane({"fine": LocalHandle(Answers()), "stuck": LocalHandle(NeverAnswers())}, {},
                      IngressOptions(version="test", max_request_bytes=1024), statistics=None)

    async def run():
        assert await plane.server_ready() is False
        index = await plane.repository_index()
        assert {"name": "stuck", "version": "", "state": "UNAVAILABLE",
                "reason": "model 'stuck' did not answer within 0.2 s"} in index
        assert {"name": "fine", "version": "1", "state": "READY", "reason": ""} in index
        with pytest.raises(InferenceError) as info:
            await plane.model_metadata("stuck")
        assert info.value.code == ErrorCode.UNAVAILABLE
        assert (await plane.model_metadata("fine"))["versions"] == ["1"]

    asyncio.run(asyncio.wait_for(run(), 10))


class Listing:
    """The sync's watch: generation 1, one model built, one more in the store and not loaded."""

    async def watch_models(self, generation: int):
        return 1, {}, ["fine", "later"], [], []


def test_an_index_asked_before_the_follower_had_the_listing_lists_the_whole_store():
    """An index right after start (readiness first, as a deploy script does) reads the store's listing
    itself when the follower has not had it yet: a model not loaded still appears."""
    plane = DataPlane({"fine": LocalHandle(Answers())}, {}, IngressOptions(version="test", max_request_bytes=1024),
                      statistics=None, sync=LocalHandle(Listing()))

    async def run():
        index = await plane.repository_index()
        assert {"name": "later", "version": "", "state": "UNAVAILABLE", "reason": dataplane.NOT_LOADED} in index
        assert plane.generation == 1

    asyncio.run(asyncio.wait_for(run(), 10))
