"""What every served model offers through its handle, models and ensembles alike.

The DataPlane and other Ray jobs call ``infer`` / ``infer_versioned``, ``ready``, ``metadata``,
``model_config``, ``index``, ``statistics`` and ``followed``; a deployment implements ``infer_versioned``
and the rest, and this base gives it ``infer``, the numpy-in, numpy-out call users make, and a
``followed`` for served models that do not follow the sync deployment (ensembles follow their steps).
``infer`` also takes inputs that are tensors of an earlier call's result left in Ray's object store
(:class:`ResultTensor`): that is how an ensemble passes one step's outputs to the next.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

from deployments.backends import Tensors


#: Calls whose tensors come to at least this many bytes go through Ray's object store (a handle call by
#: reference: one copy in, read in place) instead of Serve's gRPC between replicas (throughput-optimized
#: Serve's default, faster for small calls), which pickles them through a socket. Measured side by side
#: (docs/architecture.md "Large tensors"): at 1 MB gRPC is as fast or faster, at 4 MB the object store
#: is 1.2-2x faster; 2 MB is even.
BY_REFERENCE_BYTES = 2 << 20


@dataclass(frozen=True)
class ResultTensor:
    """An ``infer`` input that is one tensor of an earlier ``infer`` call's result, by reference.

    ``result`` is the Ray ObjectRef of that call's result (a dict of arrays), ``name`` the tensor in it and
    ``rows`` an optional ``(start, stop)`` slice of its first dim. The called replica reads the result from
    the object store, in place on its node (fetched once from another node), so the tensor's bytes go from
    one replica to the next without passing through the caller."""

    result: Any
    name: str
    rows: tuple[int, int] | None = None


async def resolved(inputs: Mapping[str, Any]) -> Tensors:
    """The inputs with every :class:`ResultTensor` replaced by its array (each result fetched once)."""
    refs = list({value.result: None for value in inputs.values() if isinstance(value, ResultTensor)})
    if not refs:
        return dict(inputs)
    results = dict(zip(refs, await asyncio.gather(*refs)))
    arrays = {}
    for name, value in inputs.items():
        if isinstance(value, ResultTensor):
            array = results[value.result][value.name]
            value = array if value.rows is None else array[slice(*value.rows)]
        arrays[name] = value
    return arrays


def sized_for(handle: Any, tensors: Mapping[str, Any]) -> Any:
    """The handle to send these tensors with: by reference when they are large or hold references (Ray
    then tracks them as borrowed while the call runs), else as it is. A LocalHandle ignores it."""
    if isinstance(handle, LocalHandle):
        return handle
    by_reference = any(isinstance(value, ResultTensor) for value in tensors.values()) or (
        sum(getattr(value, "nbytes", 0) for value in tensors.values()) >= BY_REFERENCE_BYTES)
    return handle.options(_by_reference=True) if by_reference else handle


async def answer(response: Any) -> Any:
    """A handle call's result. A caller that gives up (its client gone, a timeout) cancels the call where it
    runs, so that its request leaves the model's queue (Serve cancels a call only when told)."""
    try:
        return await response
    except asyncio.CancelledError:
        if hasattr(response, "cancel"):  # a DeploymentResponse (a LocalHandle's call is cancelled with us)
            response.cancel()
        raise


async def stream_of(responses: Any) -> AsyncIterator[Any]:
    """A streaming handle call's items; a caller that stops early (its client gone) cancels the call."""
    try:
        async for item in responses:
            yield item
    except (asyncio.CancelledError, GeneratorExit):
        if hasattr(responses, "cancel"):
            responses.cancel()
        raise


class ServedModel:
    async def infer(
        self, inputs: Mapping[str, Any], outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None, request_id: str = "",
        callers: tuple[str, ...] = (),
    ) -> Tensors:
        """Run one request: a dict of numpy arrays (or :class:`ResultTensor`) in, a dict of numpy arrays
        out. ``trace``: the context of a sampled request's span (deployments/observability/tracing.py), whose
        trace this request's spans join; ``request_id``: the client's id (a Python model reads it);
        ``callers``: the models whose BLS calls led here (deployments/serving/bls.py)."""
        _, result = await self.infer_versioned(await resolved(inputs), outputs, version, parameters, trace,
                                               request_id, callers)
        return result

    async def infer_versioned(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None, request_id: str = "",
        callers: tuple[str, ...] = (),
    ) -> tuple[int, Tensors]:
        """Like ``infer``, also returning the version that answered (the protocol's model_version)."""
        raise NotImplementedError

    async def infer_stream(
        self, inputs: Tensors, outputs: list[str] | None = None, version: int | str | None = None,
        parameters: dict | None = None, trace: dict[str, str] | None = None, request_id: str = "",
        callers: tuple[str, ...] = (),
    ) -> AsyncIterator[tuple[int, Tensors]]:
        """Every response to one request, as (version, outputs): here the one ``infer_versioned`` gives; a
        decoupled model's zero or more. Called through a handle with ``.options(stream=True)``."""
        yield await self.infer_versioned(inputs, outputs, version, parameters, trace, request_id, callers)

    def followed(self) -> float:
        """The sync generation this copy has applied: every one, for a model that does not follow the sync."""
        return math.inf

    def labels(self, outputs: list[str]) -> dict[str, Any]:
        """For Triton's classification extension: whether the model batches, and the labels of those
        ``outputs`` that have a ``label_filename`` (here: none)."""
        return {"batched": False, "labels": {}}


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
