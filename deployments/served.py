"""What every served model offers through its handle, models and ensembles alike.

The DataPlane and other Ray jobs call ``infer`` / ``infer_versioned``, ``ready``, ``metadata``,
``model_config``, ``index``, ``statistics`` and ``followed``; a deployment implements ``infer_versioned``
and the rest, and this base gives it ``infer``, the numpy-in, numpy-out call users make, and a
``followed`` for served models that do not follow the sync deployment (ensembles follow their steps).
"""

from __future__ import annotations

import inspect
import math
from typing import AsyncIterator

from deployments.backends import Tensors


class ServedModel:
    async def infer(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None,
    ) -> Tensors:
        """Run one request: a dict of numpy arrays in, a dict of numpy arrays out. ``trace``: the context of
        a sampled request's span (deployments/tracing.py), whose trace this request's spans join."""
        _, result = await self.infer_versioned(inputs, outputs, version, parameters, trace)
        return result

    async def infer_versioned(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None,
    ) -> tuple[int, Tensors]:
        """Like ``infer``, also returning the version that answered (the protocol's model_version)."""
        raise NotImplementedError

    async def infer_stream(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None,
    ) -> AsyncIterator[tuple[int, Tensors]]:
        """Every response to one request, as (version, outputs): here the one ``infer_versioned`` gives; a
        decoupled model's zero or more. Called through a handle with ``.options(stream=True)``."""
        yield await self.infer_versioned(inputs, outputs, version, parameters, trace)

    def followed(self) -> float:
        """The sync generation this copy has applied: every one, for a model that does not follow the sync."""
        return math.inf


class LocalHandle:
    """A served model held in this process, called as through its DeploymentHandle:
    ``await handle.infer_versioned.remote(...)``. The Ingress uses it for the models it colocates."""

    def __init__(self, served: ServedModel):
        self._served = served

    def options(self, **_) -> "LocalHandle":
        """As a DeploymentHandle's (``stream=True`` for generator methods): nothing to set in-process."""
        return self

    def __getattr__(self, method: str) -> "_LocalMethod":
        return _LocalMethod(getattr(self._served, method))


class _LocalMethod:
    def __init__(self, method):
        self._method = method

    def remote(self, *args, **kwargs):
        """An awaitable of the result, or for a generator method the async iterator of its items."""
        result = self._method(*args, **kwargs)
        return result if inspect.isasyncgen(result) else _awaited(result)


async def _awaited(result):
    return await result if inspect.isawaitable(result) else result
