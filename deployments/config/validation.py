"""Checks a request against the model config before it may join a batch.

Bad input never reaches a backend: names, datatypes, shapes and batch sizes are checked here, and each
problem is reported with the tensor's name.
"""

from __future__ import annotations

import numpy as np

from deployments.config.model_config import ModelConfig
from deployments.config.messages import TensorConfig
from deployments.config.dtypes import v2_datatype
from deployments.errors import invalid

Tensors = dict[str, np.ndarray]


def shape_matches(shape: tuple[int, ...] | list[int], dims: list[int]) -> bool:
    """Whether a concrete shape fits config dims, where -1 matches any size."""
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims))


def validate_inputs(config: ModelConfig, inputs: Tensors) -> int:
    """Check inputs against the config; return the request's batch size (1 for a non-batching model).

    BYTES inputs given as numpy ``S``/``U`` arrays are converted in place to object arrays of bytes.
    """
    if not isinstance(inputs, dict) or not inputs:
        raise invalid(f"model '{config.name}' needs a dict of input tensors")
    expected = {tensor.name: tensor for tensor in config.input}
    for name in inputs:
        if name not in expected:
            raise invalid(  # Triton's words, then ours
                f"unexpected inference input '{name}' for model '{config.name}'; it takes {sorted(expected)}"
            )
    rows: int | None = None
    for tensor in config.input:
        if tensor.name not in inputs:
            if tensor.optional:
                continue
            raise invalid(f"missing input '{tensor.name}' for model '{config.name}'")
        array = inputs[tensor.name] = _checked_array(config, tensor, inputs[tensor.name])
        if config.batching:
            if rows is not None and array.shape[0] != rows:
                raise invalid(
                    f"input '{tensor.name}' has batch size {array.shape[0]}, other inputs have {rows}"
                )
            rows = array.shape[0]
    return rows if rows is not None else 1


def _checked_array(config: ModelConfig, tensor: TensorConfig, array: object) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise invalid(f"input '{tensor.name}' must be a numpy array, got {type(array).__name__}")
    if array.dtype.kind in "SU":
        array = np.array([_as_bytes(item) for item in array.reshape(-1)], dtype=object).reshape(array.shape)
    try:
        datatype = v2_datatype(array.dtype)
    except ValueError as exc:
        raise invalid(f"input '{tensor.name}': {exc}") from None
    if datatype != tensor.datatype:
        raise invalid(
            f"inference input '{tensor.name}' data-type is '{datatype}', but model '{config.name}' expects "
            f"'{tensor.datatype}'"
        )
    shape = array.shape
    if config.batching:
        if len(shape) == 0 or not 1 <= shape[0] <= config.max_batch_size:
            raise invalid(
                f"inference request batch-size must be <= {config.max_batch_size} for '{config.name}': input "
                f"'{tensor.name}' has shape {list(shape)}, whose first dim is the batch size (1 or more)"
            )
        shape = shape[1:]
    if not shape_matches(shape, tensor.dims):
        expected = ([-1] if config.batching else []) + tensor.dims
        raise invalid(
            f"unexpected shape for input '{tensor.name}' for model '{config.name}'. Expected "
            f"{_dims(expected)}, got {_dims(array.shape)}"
        )
    return array


def _dims(dims) -> str:
    """A shape as Triton writes it: [-1,16]."""
    return "[" + ",".join(str(d) for d in dims) + "]"


def _as_bytes(item: object) -> bytes:
    return item.encode() if isinstance(item, str) else bytes(item)


def validate_outputs(config: ModelConfig, requested: list[str] | None) -> list[str] | None:
    """Check requested output names; None means all outputs."""
    if requested is None:
        return None
    known = {tensor.name for tensor in config.output}
    for name in requested:
        if name not in known:
            raise invalid(f"unknown output '{name}' for model '{config.name}'; it has {sorted(known)}")
    return list(requested)


def to_backend_shapes(config: ModelConfig, inputs: Tensors) -> Tensors:
    """Apply input ``reshape``: the backend sees reshape.shape where the client sent dims."""
    return _reshaped(config, config.input, inputs, to_backend=True)


def from_backend_shapes(config: ModelConfig, outputs: Tensors) -> Tensors:
    """Undo output ``reshape``: the client sees dims where the backend produced reshape.shape."""
    return _reshaped(config, config.output, outputs, to_backend=False)


def _reshaped(config: ModelConfig, tensors: list[TensorConfig], arrays: Tensors, to_backend: bool) -> Tensors:
    reshaped = dict(arrays)
    for tensor in tensors:
        if tensor.reshape is not None and tensor.name in arrays:
            array = arrays[tensor.name]
            lead = array.shape[:1] if config.batching else ()
            shape = tensor.reshape.shape if to_backend else tensor.dims
            reshaped[tensor.name] = array.reshape(lead + tuple(shape))
    return reshaped
