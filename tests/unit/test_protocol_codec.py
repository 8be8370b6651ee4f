"""KServe v2 JSON codec: requests in, responses out, and every malformed body refused cleanly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.protocol.codec import InferRequest, decode_infer_request, encode_infer_response
from cluster.protocol.raw_tensors import MAX_BYTES_ELEMENTS
from deployments.errors import ErrorCode, InferenceError


def body(**message) -> bytes:
    return json.dumps(message).encode()


def tensor(name="x", shape=(2,), datatype="FP32", data=(1, 2)):
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": list(data)}


@pytest.mark.parametrize(
    "datatype, data, expected",
    [
        ("FP32", [1.5, 2], np.array([1.5, 2], np.float32)),
        ("FP16", [0.5, 1], np.array([0.5, 1], np.float16)),
        ("INT8", [-3, 4], np.array([-3, 4], np.int8)),
        ("UINT64", [0, 2**63], np.array([0, 2**63], np.uint64)),
        ("BOOL", [True, False], np.array([True, False])),
        ("BYTES", ["hé", ""], np.array(["hé".encode(), b""], dtype=object)),
    ],
)
def test_decodes_every_kind_of_datatype(datatype, data, expected):
    request = decode_infer_request(body(inputs=[tensor(datatype=datatype, data=data)]))
    np.testing.assert_array_equal(request.inputs["x"], expected)
    assert request.inputs["x"].dtype == expected.dtype


def test_decodes_nested_data_ids_outputs_and_parameters():
    request = decode_infer_request(body(
        id="req-1", parameters={"p": 1},
        inputs=[tensor(shape=(2, 2), data=[[1, 2], [3, 4]])], outputs=[{"name": "y"}],
    ))
    assert request.inputs["x"].tolist() == [[1, 2], [3, 4]]
    assert request.id == "req-1" and request.outputs == ["y"] and request.parameters == {"p": 1}


def test_encodes_a_response_tritonclient_can_read():
    outputs = {"y": np.array([[1.5, 2]], np.float16), "s": np.array([b"ok"], dtype=object),
               "b": np.array([True])}
    body, header_length = encode_infer_response("m", 3, outputs, InferRequest({}, id="id-7"))
    assert header_length is None
    message = json.loads(body)
    assert message["model_name"] == "m" and message["model_version"] == "3" and message["id"] == "id-7"
    y, s, b = message["outputs"]
    assert y == {"name": "y", "datatype": "FP16", "shape": [1, 2], "data": [1.5, 2.0]}
    assert s["data"] == ["ok"] and s["datatype"] == "BYTES"
    assert b["data"] == [True]


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (body(inputs=[]), "non-empty 'inputs'"),
        (body(inputs=["x"]), "inputs[0] must be an object"),
        (body(inputs=[{"shape": [1], "datatype": "FP32", "data": [1]}]), "needs a string 'name'"),
        (body(inputs=[tensor(), tensor()]), "input 'x' is given twice"),
        (body(inputs=[tensor(datatype="FP8")]), "unknown datatype 'FP8'"),
        (body(inputs=[tensor(shape=(-1,))]), "negative dimension"),
        (body(inputs=[tensor(shape=("2",))]), "'shape' must be a list of integers"),
        (body(inputs=[tensor(shape=(3,))]), "shape [3] needs 3 elements, data has 2"),
        (body(inputs=[tensor(shape=(2**30, 2**20))]), "needs 1125899906842624 elements"),
        (body(inputs=[tensor(shape=(2**40, 2**40))]), "shape [1099511627776, 1099511627776] is too large"),
        (body(inputs=[tensor(shape=(0, 2**62), data=[])]), "shape [0, 4611686018427387904] is too large"),
        (body(inputs=[tensor(shape=(1,) * 65)]), "shape has 65 dimensions, more than 64"),
        (body(inputs=[tensor(data=["a", "b"])]), "data does not fit datatype FP32"),
        (body(inputs=[tensor(datatype="UINT8", data=[300, 1])]), "data does not fit datatype UINT8"),
        (body(inputs=[tensor(datatype="FP16", data=[1e10, 1])]), "data does not fit datatype FP16"),
        (body(inputs=[tensor(shape=(2, 2), data=[[1, 2], [3]])]), "data does not fit"),
        (body(inputs=[tensor(datatype="BOOL", data=[1, 0])]), "BOOL data must be true or false"),
        (body(inputs=[tensor(datatype="BYTES", data=[1, 2])]), "BYTES data must be strings"),
        (body(inputs=[{"name": "x", "shape": [1], "datatype": "FP32"}]), "has no 'data'"),
        (body(inputs=[tensor()], outputs="y"), "'outputs' must be a list"),
        (body(inputs=[tensor()], id=5), "'id' must be a string"),
    ],
)
def test_malformed_requests_are_invalid_with_a_clear_message(raw, message):
    with pytest.raises(InferenceError) as info:
        decode_infer_request(raw)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert message in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash_the_decoder(raw):
    try:
        decode_infer_request(raw)
    except InferenceError as exc:
        assert exc.code == ErrorCode.INVALID_ARGUMENT


#: Many dimensions, and sizes that only fit because another dimension is zero.
huge_shapes = st.lists(st.sampled_from([0, 1, 2, 2**29, 2**31, 2**62]), max_size=70)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({
    "name": st.sampled_from(["x", "", 3]),
    "shape": st.lists(st.integers(-2, 4), max_size=3) | huge_shapes | json_values,
    "datatype": st.sampled_from(["FP32", "INT8", "BYTES", "BOOL", "FP16", "nope"]) | json_values,
    "data": json_values,
}))
def test_random_tensors_decode_or_fail_cleanly(raw_tensor):
    try:
        request = decode_infer_request(json.dumps({"inputs": [raw_tensor]}).encode())
    except InferenceError as exc:
        assert exc.code == ErrorCode.INVALID_ARGUMENT
    else:
        assert list(request.inputs["x"].shape) == raw_tensor["shape"]


def binary_body(inputs, arrays, **message):
    """A request in the binary data extension: JSON header, then each input's raw bytes."""
    from cluster.protocol.raw_tensors import encode_raw

    header = json.dumps({"inputs": inputs, **message}).encode()
    return header + b"".join(encode_raw(a) for a in arrays), str(len(header))


def raw_input(name, array, size=None):
    from cluster.protocol.raw_tensors import encode_raw
    from deployments.config.dtypes import v2_datatype

    size = len(encode_raw(array)) if size is None else size
    return {"name": name, "shape": list(array.shape), "datatype": v2_datatype(array.dtype),
            "parameters": {"binary_data_size": size}}


@pytest.mark.parametrize("array", [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.array([True, False, True]),
    np.array([[1.5, -2]], np.float16),
    np.array([b"a", b"", "é".encode()], dtype=object),
    np.arange(4, dtype=np.uint64),
])
def test_binary_inputs_decode_to_the_same_array(array):
    raw, header_length = binary_body([raw_input("x", array)], [array])
    decoded = decode_infer_request(raw, header_length).inputs["x"]
    assert decoded.dtype == array.dtype and decoded.tolist() == array.tolist()


def test_aligned_binary_inputs_are_views_of_the_body():
    array = np.arange(8, dtype=np.float32)
    header = json.dumps({"inputs": [raw_input("x", array)]}).encode()
    header += b" " * (-len(header) % 8)  # pad the JSON so the tensor starts aligned
    raw = header + array.tobytes()
    decoded = decode_infer_request(raw, str(len(header))).inputs["x"]
    assert not decoded.flags.owndata and decoded.tolist() == array.tolist()


def test_binary_outputs_on_request():
    from tritonclient.utils import deserialize_bytes_tensor

    outputs = {"y": np.arange(3, dtype=np.int32), "s": np.array([b"ab", b"c"], dtype=object), "j": np.array([1.0])}
    request = InferRequest({}, outputs=["y", "s", "j"], binary_outputs={"y", "s"})
    body, header_length = encode_infer_response("m", 1, outputs, request)
    header = json.loads(body[:header_length])
    y, s, j = header["outputs"]
    assert y["parameters"] == {"binary_data_size": 12} and s["parameters"] == {"binary_data_size": 11}
    assert j["data"] == [1.0]
    assert np.frombuffer(body[header_length:header_length + 12], np.int32).tolist() == [0, 1, 2]
    assert deserialize_bytes_tensor(body[header_length + 12:]).tolist() == [b"ab", b"c"]
    everything = InferRequest({}, binary_by_default=True)
    assert encode_infer_response("m", 1, {"y": outputs["y"]}, everything)[1] is not None


def test_binary_errors():
    array = np.arange(4, dtype=np.int32)
    cases = [
        (binary_body([raw_input("x", array)], [array])[0], "99999", "does not fit a body"),
        (binary_body([raw_input("x", array)], [array])[0], "abc", "must be a non-negative integer"),
        (binary_body([raw_input("x", array)], [array])[0] + b"!", binary_body([raw_input("x", array)], [array])[1],
         "1 bytes of binary data belong to no input"),
        (*binary_body([raw_input("x", array, size=12)], [array]), "12 bytes of data, but shape [4] of INT32 needs 16"),
        (*binary_body([raw_input("x", array, size=2**40)], [array]), "runs past the end of the body"),
        (*binary_body([raw_input("x", array, size=-1)], [array]), "binary_data_size must be a non-negative integer"),
        (*binary_body([dict(raw_input("x", array), datatype="INT99")], [array]), "unknown datatype 'INT99'"),
        (*binary_body([dict(raw_input("x", array), shape=[2**31, 2**31])], [array]), "is too large"),
        (*binary_body([dict(raw_input("x", array), shape=[2**25, 2**25])], [array]), "needs 4503599627370496"),
    ]
    strings = np.array([b"abc"], dtype=object)
    truncated, length = binary_body([raw_input("s", strings, size=5)], [strings])
    cases.append((truncated[:-2], length, "runs past the data"))
    prefix_only, length = binary_body([raw_input("s", strings, size=2)], [strings])
    cases.append((prefix_only[:int(length) + 2], length, "cannot hold 1 BYTES elements"))
    one = np.array([b"a"], dtype=object)  # 5 bytes; then 3 bytes of a second length prefix
    short, length = binary_body([dict(raw_input("s", one, size=8), shape=[2])], [one])
    cases.append((short + b"\x01\x00\x00", length, "truncated BYTES length prefix"))
    for raw, header_length, message in cases:
        with pytest.raises(InferenceError) as info:
            decode_infer_request(raw, header_length)
        assert info.value.code == ErrorCode.INVALID_ARGUMENT
        assert message in str(info.value), (message, str(info.value))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(-5, 400).map(str) | st.text(max_size=4))
def test_random_binary_bodies_and_headers_fail_cleanly(raw, header_length):
    try:
        decode_infer_request(raw, header_length)
    except InferenceError as exc:
        assert exc.code == ErrorCode.INVALID_ARGUMENT


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["INT32", "FP64", "BOOL", "BYTES", "FP16", "BF16"]),
    st.lists(st.integers(0, 5), max_size=3) | huge_shapes,
    st.binary(max_size=64),
)
def test_random_raw_tensors_decode_or_fail_cleanly(datatype, shape, data):
    header = json.dumps({"inputs": [{"name": "x", "shape": shape, "datatype": datatype,
                                     "parameters": {"binary_data_size": len(data)}}]}).encode()
    try:
        request = decode_infer_request(header + data, str(len(header)))
    except InferenceError as exc:
        too_many = datatype == "BYTES" and math.prod(shape) > MAX_BYTES_ELEMENTS  # may be refused before its size
        assert exc.code == ErrorCode.INVALID_ARGUMENT or (too_many and exc.code == ErrorCode.TOO_LARGE)
    else:
        assert list(request.inputs["x"].shape) == shape


def test_generate_requests_map_fields_to_inputs_or_parameters_and_back():
    from cluster.protocol.codec import decode_generate_request, encode_generate_response

    inputs = [{"name": "TEXT", "datatype": "BYTES"}, {"name": "IDS", "datatype": "INT32"}]
    request = decode_generate_request(
        json.dumps({"id": "9", "TEXT": "hi", "IDS": [1, 2, 3], "temperature": 0.5,
                    "parameters": {"stream": True}}).encode(), inputs, batching=True)
    assert request.id == "9" and request.parameters == {"stream": True, "temperature": 0.5}
    assert request.inputs["TEXT"].tolist() == [[b"hi"]] and request.inputs["IDS"].tolist() == [[1, 2, 3]]
    unbatched = decode_generate_request(b'{"TEXT": "hi"}', inputs, batching=False)
    assert unbatched.inputs["TEXT"].shape == (1,)
    message = encode_generate_response("m", 2, {"TOKEN": np.array([[b"yes"]], dtype=object),
                                                 "SCORES": np.array([[0.5, 1.5]], np.float32)}, request, batching=True)
    assert message == {"model_name": "m", "model_version": "2", "id": "9", "TOKEN": "yes", "SCORES": [0.5, 1.5]}
    with pytest.raises(InferenceError, match="data does not fit datatype INT32"):
        decode_generate_request(b'{"IDS": ["x"]}', inputs, batching=True)
    with pytest.raises(InferenceError, match="nested lists must be of equal lengths"):
        decode_generate_request(b'{"IDS": [[1], [1, 2]]}', inputs, batching=True)


def test_bytes_elements_past_the_limit_are_refused_before_they_are_decoded():
    """The review's request: millions of empty BYTES elements cost seconds of the replica's CPU to decode."""
    from tritonclient.grpc import service_pb2

    from cluster.protocol import grpc_codec
    from cluster.protocol.codec import decode_generate_request

    many = MAX_BYTES_ELEMENTS + 1
    header = json.dumps({"inputs": [
        {"name": "A", "datatype": "BYTES", "shape": [many // 2], "parameters": {"binary_data_size": 4 * (many // 2)}},
        {"name": "B", "datatype": "BYTES", "shape": [many - many // 2],
         "parameters": {"binary_data_size": 4 * (many - many // 2)}}]}).encode()
    with pytest.raises(InferenceError, match=f"BYTES inputs hold {many} elements; the server decodes at most "
                                             f"{MAX_BYTES_ELEMENTS}") as refused:
        decode_infer_request(header + b"\0" * 4 * many, str(len(header)))
    assert refused.value.code == ErrorCode.TOO_LARGE
    message = service_pb2.ModelInferRequest(model_name="m")
    message.inputs.add(name="A", datatype="BYTES", shape=[many])
    with pytest.raises(InferenceError, match="BYTES inputs hold") as refused:
        grpc_codec.decode_infer_request(message, [b"\0" * 4 * many])
    assert refused.value.code == ErrorCode.TOO_LARGE
    small = decode_infer_request(json.dumps({"inputs": [{"name": "A", "datatype": "BYTES", "shape": [2],
                                                         "data": ["a", "b"]}]}).encode())
    assert list(small.inputs["A"]) == [b"a", b"b"]
    # a shape that claims one element in front of 16 MB of empty ones: one is decoded, then the rest refused
    lying = json.dumps({"inputs": [{"name": "A", "datatype": "BYTES", "shape": [1],
                                    "parameters": {"binary_data_size": 4 << 22}}]}).encode()
    with pytest.raises(InferenceError, match="16777212 bytes of data after the 1 BYTES elements the shape needs"):
        decode_infer_request(lying + b"\0" * (4 << 22), str(len(lying)))
    words = ["w"] * many  # the generate extension counts too
    with pytest.raises(InferenceError, match="BYTES inputs hold"):
        decode_generate_request(json.dumps({"TEXT": words}).encode(), [{"name": "TEXT", "datatype": "BYTES"}], False)
