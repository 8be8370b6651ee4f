"""What every served model offers through its handle, models and ensembles alike.

The DataPlane and other Ray jobs call ``infer`` / ``infer_versioned``, ``ready``, ``metadata``,
``model_config``, ``index`` and ``statistics``; a deployment implements ``infer_versioned`` and the rest,
and this base gives it ``infer``, the numpy-in, numpy-out call users make.
"""

from __future__ import annotations

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
