"""KServe v2 JSON tensors <-> numpy. Pure converters: no Ray, no I/O.

Every malformed request raises an ``INVALID_ARGUMENT`` InferenceError that names the problem; no
allocation is sized from a client's claims (shapes are checked against the data actually sent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from deployments.dtypes import numpy_dtype, v2_datatype
from deployments.errors import invalid

Tensors = dict[str, np.ndarray]


@dataclass
class InferRequest:
    """A decoded inference request."""

    inputs: Tensors
    outputs: list[str] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_infer_request(body: bytes) -> InferRequest:
    """Decode a JSON inference request body."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON in request body: {exc}") from None
    if not isinstance(message, dict):
        raise invalid("request body must be a JSON object")
    raw_inputs = message.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("request must have a non-empty 'inputs' list")
    inputs: Tensors = {}
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise invalid(f"inputs[{i}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"inputs[{i}] needs a string 'name'")
        if name in inputs:
            raise invalid(f"input '{name}' is given twice")
        inputs[name] = decode_tensor(raw, name)
    outputs = None
    if "outputs" in message:
        raw_outputs = message["outputs"]
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise invalid("'outputs' must be a list of objects with a string 'name'")
        outputs = [o["name"] for o in raw_outputs]
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    parameters = message.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid("'parameters' must be an object")
    return InferRequest(inputs, outputs, request_id, parameters)


def decode_shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise invalid(f"input '{name}': 'shape' must be a list of integers")
    if any(d < 0 for d in raw):
        raise invalid(f"input '{name}': shape {raw} has a negative dimension")
    return tuple(raw)


def decode_tensor(raw: dict[str, Any], name: str) -> np.ndarray:
    """One JSON input tensor: shape, datatype and row-major data (flat or nested)."""
    shape = decode_shape(raw.get("shape"), name)
    datatype = raw.get("datatype")
    try:
        dtype = numpy_dtype(datatype)
    except ValueError as exc:
        raise invalid(f"input '{name}': {exc}") from None
    if "data" not in raw:
        raise invalid(f"input '{name}' has no 'data'")
    data = raw["data"]
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            array = np.array([_to_bytes(item) for item in _flatten(data)], dtype=object)
        elif datatype == "BOOL":
            flat = _flatten(data)
            if not all(isinstance(item, bool) for item in flat):
                raise ValueError("BOOL data must be true or false")
            array = np.array(flat, dtype=dtype)
        else:
            array = np.array(data, dtype=dtype).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise invalid(f"input '{name}': data does not fit datatype {datatype}: {exc}") from None
    expected = math.prod(shape)
    if array.size != expected:
        raise invalid(f"input '{name}': shape {list(shape)} needs {expected} elements, data has {array.size}")
    return array.reshape(shape)


def _flatten(data: list) -> list:
    flat: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _to_bytes(item: Any) -> bytes:
    if not isinstance(item, str):
        raise ValueError("BYTES data must be strings")
    return item.encode()


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = v2_datatype(array.dtype)
    flat = array.reshape(-1)
    if datatype == "BYTES":
        data: Any = [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in flat]
    elif datatype in ("FP16", "BF16"):
        data = flat.astype(np.float32)
    else:
        data = flat
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def encode_infer_response(
    model_name: str, model_version: int | str, outputs: Tensors, request_id: str | None = None
) -> bytes:
    """Encode outputs as a JSON inference response."""
    message: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request_id is not None:
        message["id"] = request_id
    message["outputs"] = [encode_tensor(name, array) for name, array in outputs.items()]
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_json(message: Any) -> bytes:
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
