"""The gRPC response as Serve sends it: the bytes ``EncodedInferResponse`` writes are the ones protobuf writes
for the same message, for any outputs (raw lengths whose varint takes one to four bytes, strings, an
output left in shared memory), and tritonclient reads them back."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import InferResult, service_pb2

from cluster.protocol.codec import InferRequest
from cluster.protocol.grpc_codec import encode_infer_response
from cluster.protocol.raw_tensors import encode_raw


def protobuf_message(outputs: dict[str, np.ndarray], request: InferRequest) -> service_pb2.ModelInferResponse:
    """The response built field by field, as protobuf serialises it."""
    message = service_pb2.ModelInferResponse(model_name="m", model_version="3", id=request.id or "")
    for name, array in outputs.items():
        message.outputs.add(name=name, datatype="BYTES" if array.dtype == object else "FP32", shape=list(array.shape))
        message.raw_output_contents.append(b"" if name in request.shared_outputs else bytes(encode_raw(array)))
    return message


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.sampled_from([0, 1, 31, 32, 4095, 4096, 600_000]), min_size=1, max_size=3),
       request_id=st.sampled_from([None, "", "a request"]))
def test_the_bytes_are_protobufs_own(sizes, request_id):
    outputs = {f"OUT{i}": np.arange(size, dtype=np.float32).reshape(1, size) for i, size in enumerate(sizes)}
    request = InferRequest(inputs={}, id=request_id)
    encoded = encode_infer_response("m", 3, outputs, request)
    expected = protobuf_message(outputs, request)
    assert encoded.SerializeToString() == expected.SerializeToString()
    assert encoded.message() == expected


def test_strings_and_an_output_in_shared_memory_read_back_through_tritonclient():
    outputs = {"TEXT": np.array([["a", "bc"]], dtype=object), "BIG": np.ones((2, 3000), np.float32)}
    request = InferRequest(inputs={}, id="7", shared_outputs={"BIG": object()})
    wire = encode_infer_response("m", 3, outputs, request).SerializeToString()
    assert wire == protobuf_message(outputs, request).SerializeToString()
    result = InferResult(service_pb2.ModelInferResponse.FromString(wire))
    assert result.as_numpy("TEXT").tolist() == [[b"a", b"bc"]]
    assert result.get_response().raw_output_contents[1] == b"" and result.get_response().id == "7"
