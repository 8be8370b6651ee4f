"""Triton gRPC messages (``tritonclient.grpc.service_pb2``) <-> numpy and data-plane dicts.

Pure converters: no Ray, no I/O. Tensors travel as ``raw_input_contents`` / ``raw_output_contents``
(the same bytes as the HTTP binary extension) or as typed ``contents``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2

from cluster.protocol.codec import InferRequest, SharedInput, decode_shape, shared_input, shared_slice
from cluster.protocol.classification import class_count
from cluster.protocol.raw_tensors import check_bytes_elements, decode_raw, encode_raw
from deployments.backends import Tensors, response_parameters
from deployments.config.dtypes import numpy_dtype, v2_datatype
from deployments.errors import invalid

#: Which typed ``InferTensorContents`` field carries each datatype (FP16 and BF16 only travel raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_infer_request(request: service_pb2.ModelInferRequest, raw: list[bytes] | None = None) -> InferRequest:
    """Decode a ModelInferRequest's tensors, checking every size against the bytes received; ``raw``: its
    ``raw_input_contents`` when the caller has taken them out already."""
    if not request.inputs:
        raise invalid("request must have at least one input")
    raw = list(request.raw_input_contents) if raw is None else raw
    shared = {tensor.name: shared_slice(plain_parameters(tensor.parameters), f"input '{tensor.name}'")
              for tensor in request.inputs}
    for tensor in request.inputs:  # Triton's words, which its clients check
        if shared[tensor.name] is not None and tensor.HasField("contents"):
            raise invalid(f"unexpected 'content' provided when using shared memory for input tensor "
                          f"'{tensor.name}' for model '{request.model_name}'")
        if raw and tensor.HasField("contents"):
            raise invalid(f"contents field must not be specified when using raw_input_contents for "
                          f"'{tensor.name}' for model '{request.model_name}'")
    in_message = [tensor for tensor in request.inputs if shared[tensor.name] is None]
    if raw and len(raw) != len(in_message):
        raise invalid(f"{len(raw)} raw_input_contents for {len(in_message)} inputs not in shared memory; "
                      "send one per input")
    inputs: Tensors = {}
    shared_inputs: dict[str, SharedInput] = {}
    raw_contents = iter(raw)
    for i, tensor in enumerate(request.inputs):
        name = tensor.name
        if not name:
            raise invalid(f"inputs[{i}] needs a name")
        if name in inputs or name in shared_inputs:
            raise invalid(f"input '{name}' is given twice")
        shape = decode_shape(list(tensor.shape), name)
        if shared[name] is not None:
            shared_inputs[name] = shared_input(name, tensor.datatype, shape, shared[name])
        elif raw:
            inputs[name] = decode_raw(name, tensor.datatype, shape, next(raw_contents),
                                      sum(t.size for t in inputs.values() if t.dtype == object))
        else:
            inputs[name] = _decode_contents(name, tensor, shape,
                                            sum(t.size for t in inputs.values() if t.dtype == object))
    outputs = [output.name for output in request.outputs] or None
    shared_outputs = {output.name: where for output in request.outputs
                      if (where := shared_slice(plain_parameters(output.parameters), f"output '{output.name}'"))}
    classifications = {output.name: count for output in request.outputs
                       if (count := class_count(output.name, plain_parameters(output.parameters))) is not None}
    return InferRequest(inputs, outputs, request.id or None, plain_parameters(request.parameters),
                        shared_inputs=shared_inputs, shared_outputs=shared_outputs, classifications=classifications)


def plain_parameters(parameters) -> dict[str, Any]:
    """A map of InferParameter messages as plain values."""
    return {key: getattr(value, value.WhichOneof("parameter_choice"))
            for key, value in parameters.items() if value.WhichOneof("parameter_choice")}


def infer_parameter(value: bool | int | float | str) -> service_pb2.InferParameter:
    """A plain value as an InferParameter (a response parameter)."""
    if isinstance(value, bool):
        return service_pb2.InferParameter(bool_param=value)
    if isinstance(value, int):
        return service_pb2.InferParameter(int64_param=value)
    if isinstance(value, float):
        return service_pb2.InferParameter(double_param=value)
    return service_pb2.InferParameter(string_param=str(value))


def _decode_contents(name: str, tensor: service_pb2.ModelInferRequest.InferInputTensor, shape,
                     bytes_before: int = 0) -> np.ndarray:
    try:
        dtype = numpy_dtype(tensor.datatype)
    except ValueError as exc:
        raise invalid(f"input '{name}': {exc}") from None
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None:
        raise invalid(f"input '{name}': {tensor.datatype} data must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    expected = math.prod(shape)
    if len(values) != expected:
        raise invalid(f"input '{name}': shape {list(shape)} needs {expected} elements, contents has {len(values)}")
    try:
        if tensor.datatype == "BYTES":
            check_bytes_elements(bytes_before + expected)
            array = np.empty(expected, dtype=object)
            array[:] = list(values)
        else:
            array = np.array(values, dtype=dtype)
    except OverflowError as exc:
        raise invalid(f"input '{name}': contents do not fit datatype {tensor.datatype}: {exc}") from None
    return array.reshape(shape)


class EncodedInferResponse:
    """A ModelInferResponse as Serve sends it (its ``SerializeToString``): the message without its raw
    output contents, serialised by protobuf, followed by each output's bytes as the repeated
    ``raw_output_contents`` field, as they are. Fields may follow one another in any order on the wire, and
    protobuf writes this one last, so the bytes are the ones protobuf would write. Each output is copied
    once, into the answer; putting it in the message and serialising that copied it three times (8 ms for
    4 MB with upb)."""

    __slots__ = ("head", "raw")

    def __init__(self, head: service_pb2.ModelInferResponse, raw: list[bytes | memoryview]):
        self.head, self.raw = head, raw

    def SerializeToString(self) -> bytes:  # noqa: N802 - protobuf's name, which Serve calls
        parts = [self.head.SerializeToString()]
        for contents in self.raw:
            parts += [_RAW_OUTPUT_TAG, _varint(len(contents)), contents]
        return b"".join(parts)

    def message(self) -> service_pb2.ModelInferResponse:
        """The response as a message (a stream's responses go inside another message)."""
        message = service_pb2.ModelInferResponse()
        message.CopyFrom(self.head)
        message.raw_output_contents.extend(bytes(contents) for contents in self.raw)
        return message


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: raw_output_contents's key on the wire: its field number and the length-delimited wire type (2).
_RAW_OUTPUT_TAG = _varint(
    service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number << 3 | 2)


def encode_infer_response(
    model: str, version: int | str, outputs: Tensors, request: InferRequest
) -> EncodedInferResponse:
    """The response; outputs written to shared memory get an empty raw_output_contents entry (as Triton:
    one entry per output, so clients find each by its index)."""
    head = service_pb2.ModelInferResponse(model_name=model, model_version=str(version), id=request.id or "")
    for key, value in response_parameters(outputs).items():
        head.parameters[key].CopyFrom(infer_parameter(value))
    raw = []
    for name, array in outputs.items():
        head.outputs.add(name=name, datatype=v2_datatype(array.dtype), shape=list(array.shape))
        raw.append(b"" if name in request.shared_outputs else encode_raw(array))
    return EncodedInferResponse(head, raw)


def to_message(data: dict[str, Any], message_class):
    """A data-plane dict (the HTTP JSON form) as the matching gRPC message; the shapes agree field by field."""
    return json_format.ParseDict(data, message_class())
