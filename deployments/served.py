"""What every served model offers through its handle, models and ensembles alike.

The DataPlane and other Ray jobs call ``infer`` / ``infer_versioned``, ``ready``, ``metadata``,
``model_config``, ``index``, ``statistics`` and ``followed``; a deployment implements ``infer_versioned``
and the rest, and this base gives it ``infer``, the numpy-in, numpy-out call users make, and a
``followed`` for served models that do not follow the sync deployment (ensembles follow their steps).
"""

from __future__ import annotations

import inspect
import math

from deployments.backends import Tensors


class ServedModel:
    async def infer(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None,
    ) -> Tensors:
        """Run one request: a dict of numpy arrays in, a dict of numpy arrays out."""
        _, result = await self.infer_versioned(inputs, outputs, version, parameters)
        return result

    async def infer_versioned(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None,
    ) -> tuple[int, Tensors]:
        """Like ``infer``, also returning the version that answered (the protocol's model_version)."""
        raise NotImplementedError

    def followed(self) -> float:
        """The sync generation this copy has applied: every one, for a model that does not follow the sync."""
        return math.inf


class LocalHandle:
    """A served model held in this process, called as through its DeploymentHandle:
    ``await handle.infer_versioned.remote(...)``. The Ingress uses it for the models it colocates."""

    def __init__(self, served: ServedModel):
        self._served = served

    def __getattr__(self, method: str) -> "_LocalMethod":
        return _LocalMethod(getattr(self._served, method))


class _LocalMethod:
    def __init__(self, method):
        self._method = method

    async def remote(self, *args, **kwargs):
        result = self._method(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result
