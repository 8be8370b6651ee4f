"""KServe v2 JSON codec: requests in, responses out, and every malformed body refused cleanly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.codec import decode_infer_request, encode_infer_response
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
    message = json.loads(encode_infer_response("m", 3, outputs, "id-7"))
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
        (body(inputs=[tensor(shape=(2**40, 2**40))]), "needs 1208925819614629174706176 elements"),
        (body(inputs=[tensor(data=["a", "b"])]), "data does not fit datatype FP32"),
        (body(inputs=[tensor(datatype="UINT8", data=[300, 1])]), "data does not fit datatype UINT8"),
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


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({
    "name": st.sampled_from(["x", "", 3]),
    "shape": st.lists(st.integers(-2, 4), max_size=3) | json_values,
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
