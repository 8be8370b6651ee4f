"""The datatype table: KServe v2 names, Triton config names and numpy dtypes in one place."""

from __future__ import annotations

import ml_dtypes
import numpy as np

#: v2 datatype -> numpy dtype. BYTES tensors are numpy object arrays holding ``bytes``.
V2_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}

NUMPY_TO_V2: dict[np.dtype, str] = {dtype: name for name, dtype in V2_TO_NUMPY.items()}

#: Triton's ``config.pbtxt`` spells BYTES as TYPE_STRING; every other type is ``TYPE_`` + the v2 name.
_CONFIG_SPECIAL = {"TYPE_STRING": "BYTES"}
_V2_SPECIAL = {v2: config for config, v2 in _CONFIG_SPECIAL.items()}


def config_to_v2(config_type: str) -> str:
    """``TYPE_FP32`` -> ``FP32``; raises ValueError for a type the protocol cannot carry."""
    v2 = _CONFIG_SPECIAL.get(config_type, config_type.removeprefix("TYPE_"))
    if v2 not in V2_TO_NUMPY:
        raise ValueError(f"unsupported data_type {config_type!r}")
    return v2


def v2_to_config(v2: str) -> str:
    return _V2_SPECIAL.get(v2, f"TYPE_{v2}")


def numpy_dtype(v2: str) -> np.dtype:
    """The numpy dtype of a v2 datatype; raises ValueError naming the datatype if unknown."""
    try:
        return V2_TO_NUMPY[v2]
    except (KeyError, TypeError):
        raise ValueError(f"unknown datatype {v2!r}") from None


def v2_datatype(dtype: np.dtype) -> str:
    """The v2 datatype of a numpy dtype (any string or bytes array is BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "SUO":
        return "BYTES"
    try:
        return NUMPY_TO_V2[dtype]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no v2 datatype") from None
