"""KServe v2 HTTP bodies <-> numpy: JSON tensors and the binary tensor data extension.

Pure converters: no Ray, no I/O. Every malformed request raises an ``INVALID_ARGUMENT`` InferenceError that
names the problem; no allocation is sized from a client's claims (shapes are checked against the data
actually sent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from cluster.protocol.classification import class_count
from cluster.protocol.raw_tensors import check_bytes_elements, decode_raw, encode_raw
from deployments.backends import response_parameters
from deployments.config.dtypes import numpy_dtype, v2_datatype
from deployments.errors import invalid

#: The HTTP header that says how much of a binary body is the JSON part.
HEADER_LENGTH = "Inference-Header-Content-Length"

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class SharedSlice:
    """Where a request's input or output lives: ``byte_size`` bytes at ``offset`` within region ``region``."""

    region: str
    byte_size: int
    offset: int = 0


@dataclass(frozen=True)
class SharedInput:
    """An input to read from shared memory once the region is resolved."""

    datatype: str
    shape: tuple[int, ...]
    where: SharedSlice


def shared_slice(parameters: dict[str, Any], what: str) -> SharedSlice | None:
    """The shared memory parameters of an input or output (None when it names no region)."""
    region = parameters.get("shared_memory_region")
    if region is None:
        return None
    if not isinstance(region, str) or not region:
        raise invalid(f"{what}: 'shared_memory_region' must be a region name")
    size, offset = parameters.get("shared_memory_byte_size"), parameters.get("shared_memory_offset", 0)
    for key, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid(f"{what}: '{key}' must be a non-negative integer")
    return SharedSlice(region, size, offset)


@dataclass
class InferRequest:
    """A decoded inference request."""

    inputs: Tensors
    outputs: list[str] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    binary_outputs: set[str] = field(default_factory=set)
    binary_by_default: bool = False
    #: Inputs to read from system shared memory, and outputs to write there (not in the response body).
    shared_inputs: dict[str, SharedInput] = field(default_factory=dict)
    shared_outputs: dict[str, SharedSlice] = field(default_factory=dict)
    #: Outputs answered as their top classes (Triton's classification extension): name -> class count.
    classifications: dict[str, int] = field(default_factory=dict)

    def wants_binary(self, output: str) -> bool:
        return output in self.binary_outputs or (self.binary_by_default and self.outputs is None)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON part and the binary part of a request body."""
    if header_length is None:
        return body, memoryview(b"")
    if not (header_length.isascii() and header_length.isdigit()):
        raise invalid(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
    length = int(header_length)
    if not 0 < length <= len(body):
        raise invalid(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
    view = memoryview(body)
    return view[:length].tobytes(), view[length:]


def decode_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Decode an inference request body: JSON, with binary tensors after it when header_length is given."""
    json_part, binary = split_body(body, header_length)
    message = decode_json_object(json_part)
    raw_inputs = message.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("request must have a non-empty 'inputs' list")
    inputs: Tensors = {}
    shared_inputs: dict[str, SharedInput] = {}
    offset = bytes_elements = 0
    for i, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise invalid(f"inputs[{i}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"inputs[{i}] needs a string 'name'")
        if name in inputs or name in shared_inputs:
            raise invalid(f"input '{name}' is given twice")
        parameters = _parameters(raw, f"input '{name}'")
        where = _one_source(raw, parameters, name)
        if where is not None:
            shared_inputs[name] = shared_input(name, raw.get("datatype"), decode_shape(raw.get("shape"), name), where)
            continue
        size = parameters.get("binary_data_size")
        if size is None:
            inputs[name] = decode_tensor(raw, name, bytes_elements)
            bytes_elements += inputs[name].size if inputs[name].dtype == object else 0
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise invalid(f"input '{name}': binary_data_size {size} runs past the end of the body")
        inputs[name] = decode_raw(name, raw.get("datatype"), decode_shape(raw.get("shape"), name),
                                  binary[offset:offset + size], bytes_elements)
        bytes_elements += inputs[name].size if inputs[name].dtype == object else 0
        offset += size
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} bytes of binary data belong to no input")
    outputs, binary_outputs, shared_outputs, classifications = None, set(), {}, {}
    if "outputs" in message:
        raw_outputs = message["outputs"]
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise invalid("'outputs' must be a list of objects with a string 'name'")
        outputs = [o["name"] for o in raw_outputs]
        for o in raw_outputs:
            parameters = _parameters(o, f"output '{o['name']}'")
            if (count := class_count(o["name"], parameters)) is not None:
                classifications[o["name"]] = count
            where = shared_slice(parameters, f"output '{o['name']}'")
            if where is not None:
                if parameters.get("binary_data"):
                    raise invalid("Output can't set both 'shared_memory_region' and 'binary_data'")
                shared_outputs[o["name"]] = where
            elif parameters.get("binary_data"):
                binary_outputs.add(o["name"])
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    parameters = _parameters(message, "request")
    return InferRequest(inputs, outputs, request_id, parameters, binary_outputs,
                        bool(parameters.get("binary_data_output", False)), shared_inputs, shared_outputs,
                        classifications)


def _one_source(raw: dict[str, Any], parameters: dict[str, Any], name: str) -> SharedSlice | None:
    """Triton's rule: an input sets exactly one of data, binary_data_size and shared_memory_region. Returns
    its shared memory slice, if that is its source."""
    where = shared_slice(parameters, f"input '{name}'")
    sources = [field for field, given in (("'data'", "data" in raw),
                                          ("'binary_data_size'", "binary_data_size" in parameters),
                                          ("'shared_memory_region'", where is not None)) if given]
    if len(sources) > 1:
        raise invalid("Input must set only one of the following fields: 'data', 'binary_data_size' in "
                      f"'parameters', 'shared_memory_region' in 'parameters'. But set {' '.join(sources)}")
    return where


def shared_input(name: str, datatype: Any, shape: tuple[int, ...], where: SharedSlice) -> SharedInput:
    try:
        numpy_dtype(datatype)
    except ValueError as exc:
        raise invalid(f"input '{name}': {exc}") from None
    return SharedInput(datatype, shape, where)


def _parameters(raw: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise invalid(f"{what}: 'parameters' must be an object")
    return parameters


def decode_json_object(body: bytes) -> dict[str, Any]:
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid(f"malformed JSON in request body: {exc}") from None
    if not isinstance(message, dict):
        raise invalid("request body must be a JSON object")
    return message


#: Most dimensions a tensor may have (numpy's own limit).
MAX_DIMS = 64
#: Largest element count a shape may describe, zero-sized dimensions aside (numpy needs count x item size,
#: 16 bytes at most, to fit its 64-bit index type).
MAX_ELEMENTS = 2**58


def decode_shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        raise invalid(f"input '{name}': 'shape' must be a list of integers")
    if len(raw) > MAX_DIMS:
        raise invalid(f"input '{name}': shape has {len(raw)} dimensions, more than {MAX_DIMS}")
    if any(d < 0 for d in raw):
        raise invalid(f"input '{name}': shape {raw} has a negative dimension")
    if math.prod(max(d, 1) for d in raw) > MAX_ELEMENTS:
        raise invalid(f"input '{name}': shape {raw} is too large")
    return tuple(raw)


def decode_tensor(raw: dict[str, Any], name: str, bytes_before: int = 0) -> np.ndarray:
    """One JSON input tensor: shape, datatype and row-major data (flat or nested). ``bytes_before``: the
    BYTES elements the request's other inputs decoded already."""
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
            flat = _flatten(data)
            if len(flat) == math.prod(shape):  # else the count check below names the mismatch
                check_bytes_elements(bytes_before + len(flat))
            array = np.array([_to_bytes(item) for item in flat], dtype=object)
        elif datatype == "BOOL":
            flat = _flatten(data)
            if not all(isinstance(item, bool) for item in flat):
                raise ValueError("BOOL data must be true or false")
            array = np.array(flat, dtype=dtype)
        else:
            with np.errstate(over="raise", invalid="raise"):
                array = np.array(data, dtype=dtype).reshape(-1)
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
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
    model_name: str, model_version: int | str, outputs: Tensors, request: InferRequest | None = None
) -> tuple[bytes, int | None]:
    """Encode an inference response; returns the body and, when it carries binary outputs, the JSON length."""
    message: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request is not None and request.id is not None:
        message["id"] = request.id
    if parameters := response_parameters(outputs):
        message["parameters"] = parameters
    encoded, chunks = [], []
    for name, array in outputs.items():
        if request is not None and name in request.shared_outputs:  # written to shared memory, as Triton
            encoded.append({"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)})
        elif request is not None and request.wants_binary(name):
            raw = encode_raw(array)
            chunks.append(raw)
            encoded.append({"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape),
                            "parameters": {"binary_data_size": len(raw)}})
        else:
            encoded.append(encode_tensor(name, array))
    message["outputs"] = encoded
    header = orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_json(message: Any) -> bytes:
    return orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_generate_request(body: bytes, inputs: list[dict[str, Any]], batching: bool) -> InferRequest:
    """Triton's generate extension: a JSON object whose fields named after model inputs (``inputs``: the
    model metadata's, with ``datatype``) become tensors, one row when the model batches; ``parameters`` and
    the other fields become request parameters, ``id`` the request id."""
    message = decode_json_object(body)
    datatypes = {tensor["name"]: tensor["datatype"] for tensor in inputs}
    request_id = message.pop("id", None)
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    parameters = dict(_parameters(message, "request"))
    message.pop("parameters", None)
    tensors: Tensors = {}
    for name, value in message.items():
        if name not in datatypes:
            parameters[name] = value
            continue
        try:
            shape = list(np.shape(value)) or [1]
        except ValueError:  # nested lists of different lengths
            raise invalid(f"input '{name}': nested lists must be of equal lengths (a tensor)") from None
        raw = {"name": name, "datatype": datatypes[name], "shape": ([1] if batching else []) + shape,
               "data": value if isinstance(value, list) else [value]}
        tensors[name] = decode_tensor(raw, name, sum(t.size for t in tensors.values() if t.dtype == object))
    return InferRequest(tensors, None, request_id, parameters)


def encode_generate_response(model_name: str, model_version: int | str, outputs: Tensors,
                             request: InferRequest, batching: bool) -> dict[str, Any]:
    """One generate response: each output by name, a single element as a plain value (text for BYTES),
    more as a list, without the batch row."""
    message: dict[str, Any] = {"model_name": model_name, "model_version": str(model_version)}
    if request.id is not None:
        message["id"] = request.id
    for name, array in outputs.items():
        if batching and array.ndim and array.shape[0] == 1:
            array = array[0]
        flat = encode_tensor(name, array)["data"]
        values = flat.tolist() if isinstance(flat, np.ndarray) else flat
        message[name] = values[0] if len(values) == 1 else np.asarray(values, dtype=object).reshape(array.shape).tolist()
    return message
