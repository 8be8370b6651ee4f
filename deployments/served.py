"""What every served model offers through its handle, models and ensembles alike.

The DataPlane and other Ray jobs call ``infer`` / ``infer_versioned``, ``ready``, ``metadata``,
``model_config``, ``index`` and ``statistics``; a deployment implements ``infer_versioned`` and the rest,
and this base gives it ``infer``, the numpy-in, numpy-out call users make.
"""

from __future__ import annotations

import inspect

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
