"""Datatype table, request validation and batch merge/split: pure code, no Ray."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from deployments.scheduling import batching
from deployments.config.model_config import ModelConfig
from deployments.config.dtypes import V2_TO_NUMPY, config_to_v2, numpy_dtype, v2_datatype, v2_to_config
from deployments.errors import ErrorCode, InferenceError
from deployments.config.validation import from_backend_shapes, to_backend_shapes, validate_inputs, validate_outputs


@pytest.mark.parametrize("v2", sorted(V2_TO_NUMPY))
def test_datatype_table_round_trips(v2):
    assert v2_datatype(numpy_dtype(v2)) == v2
    assert config_to_v2(v2_to_config(v2)) == v2


def test_datatype_special_cases():
    assert config_to_v2("TYPE_STRING") == "BYTES" and v2_to_config("BYTES") == "TYPE_STRING"
    assert numpy_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)
    assert v2_datatype(np.dtype("S5")) == "BYTES" and v2_datatype(np.dtype("U3")) == "BYTES"
    with pytest.raises(ValueError, match="unknown datatype 'FP8'"):
        numpy_dtype("FP8")
    with pytest.raises(ValueError, match="unsupported data_type 'TYPE_COMPLEX'"):
        config_to_v2("TYPE_COMPLEX")
    with pytest.raises(ValueError, match="complex64"):
        v2_datatype(np.complex64)


CONFIG = ModelConfig.model_validate({
    "name": "m", "max_batch_size": 4,
    "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [-1, 3]},
              {"name": "b", "data_type": "TYPE_STRING", "dims": [1]},
              {"name": "c", "data_type": "TYPE_INT32", "dims": [2], "optional": True}],
    "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [6], "reshape": {"shape": [2, 3]}}],
})


def good(rows=2):
    return {"a": np.zeros((rows, 5, 3), np.float32), "b": np.array([[b"x"]] * rows, dtype=object)}


def test_valid_request_gives_its_batch_size():
    assert validate_inputs(CONFIG, good(3)) == 3


def test_string_arrays_become_bytes_objects():
    inputs = {"a": np.zeros((1, 1, 3), np.float32), "b": np.array([["hé"]])}
    validate_inputs(CONFIG, inputs)
    assert inputs["b"].dtype == object and inputs["b"][0, 0] == "hé".encode()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"z": np.zeros((2, 1), np.float32)}, "unexpected inference input 'z' for model 'm'"),
        ({"a": None}, "input 'a' must be a numpy array, got NoneType"),
        ({"a": np.zeros((2, 5, 3), np.float64)}, "inference input 'a' data-type is 'FP64', but model 'm' expects 'FP32'"),
        ({"a": np.zeros((2, 5, 4), np.float32)}, "unexpected shape for input 'a' for model 'm'. Expected [-1,-1,3], got [2,5,4]"),
        ({"a": np.zeros((5, 5, 3), np.float32)}, "inference request batch-size must be <= 4 for 'm'"),
        ({"a": np.zeros((0, 5, 3), np.float32)}, "inference request batch-size must be <= 4 for 'm'"),
        ({"a": np.float32(1.0)}, "must be a numpy array"),
        ({"c": np.zeros((3, 2), np.int32)}, "input 'c' has batch size 3, other inputs have 2"),
        ({"a": np.zeros((2, 5, 3), np.complex64)}, "complex64 has no v2 datatype"),
    ],
)
def test_each_bad_input_is_named(change, message):
    inputs = {**good(), **change}
    with pytest.raises(InferenceError) as info:
        validate_inputs(CONFIG, inputs)
    assert info.value.code == ErrorCode.INVALID_ARGUMENT
    assert message in str(info.value)


def test_missing_and_empty_inputs():
    with pytest.raises(InferenceError, match="missing input 'b' for model 'm'"):
        validate_inputs(CONFIG, {"a": good()["a"]})
    with pytest.raises(InferenceError, match="needs a dict of input tensors"):
        validate_inputs(CONFIG, {})


def test_requested_outputs():
    assert validate_outputs(CONFIG, None) is None
    assert validate_outputs(CONFIG, ["y"]) == ["y"]
    with pytest.raises(InferenceError, match="unknown output 'q' for model 'm'"):
        validate_outputs(CONFIG, ["q"])


def test_reshape_both_ways():
    config = ModelConfig.model_validate({
        "name": "r", "max_batch_size": 2,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [6], "reshape": {"shape": [2, 3]}}],
        "output": CONFIG.model_dump()["output"],
    })
    backend_inputs = to_backend_shapes(config, {"x": np.arange(12, dtype=np.float32).reshape(2, 6)})
    assert backend_inputs["x"].shape == (2, 2, 3)
    assert from_backend_shapes(config, {"y": np.zeros((2, 2, 3))})["y"].shape == (2, 6)


def test_plan_batches_groups_by_signature_and_caps_rows():
    keys = ["a", "b", "a", "a", "b"]
    rows = [2, 1, 3, 1, 1]
    assert batching.plan_batches(keys, rows, max_rows=4) == [[0], [2, 3], [1, 4]]
    assert batching.plan_batches(["a"] * 3, [1, 1, 1], max_rows=1) == [[0], [1], [2]]


def test_signature_separates_shapes_and_dtypes():
    one = {"x": np.zeros((1, 3), np.float32)}
    assert batching.signature(one) == batching.signature({"x": np.zeros((5, 3), np.float32)})
    assert batching.signature(one) != batching.signature({"x": np.zeros((1, 4), np.float32)})
    assert batching.signature(one) != batching.signature({"x": np.zeros((1, 3), np.float64)})


def test_merge_then_split_restores_each_request():
    requests = [{"x": np.full((n, 2), n, np.int64)} for n in (1, 3, 2)]
    merged = batching.merge(requests)
    assert merged["x"].shape == (6, 2)
    parts = batching.split({"y": merged["x"] * 10}, [1, 3, 2])
    for request, part in zip(requests, parts):
        np.testing.assert_array_equal(part["y"], request["x"] * 10)


def test_single_request_is_not_copied():
    request = {"x": np.zeros((2, 2))}
    assert batching.merge([request]) is request


def test_split_rejects_outputs_without_the_batch_dim():
    with pytest.raises(ValueError, match="output 'y' has shape \\[5\\], expected a batch dim of 3 rows"):
        batching.split({"y": np.zeros(5)}, [1, 2])


def test_serve_queue_full_is_unavailable_and_unknown_errors_hide_their_details():
    from ray.serve.exceptions import BackPressureError

    full = InferenceError.from_exception(BackPressureError(num_queued_requests=5, max_queued_requests=5))
    assert full.code == ErrorCode.UNAVAILABLE and full.http_status == 503 and "queue is full" in full.message
    hidden = InferenceError.from_exception(KeyError("/secret/path"))
    assert hidden.code == ErrorCode.INTERNAL and "/secret/path" not in hidden.message


def test_a_lost_replica_is_unavailable_not_internal():
    from ray.exceptions import ActorDiedError, ActorUnavailableError, NodeDiedError

    for error in (ActorDiedError(), ActorUnavailableError("node gone", None), NodeDiedError("node gone")):
        lost = InferenceError.from_exception(error)
        assert lost.code == ErrorCode.UNAVAILABLE and lost.http_status == 503, type(error)
        assert "replica serving this request was lost" in lost.message


def test_an_unavailable_deployment_or_a_cancelled_request_is_unavailable_not_internal():
    from ray.serve.exceptions import DeploymentUnavailableError, RequestCancelledError

    from ray.serve._private.common import DeploymentID

    gone = InferenceError.from_exception(DeploymentUnavailableError(DeploymentID(name="m", app_name="ric")))
    assert gone.code == ErrorCode.UNAVAILABLE and "no replica able to serve" in gone.message
    cancelled = InferenceError.from_exception(RequestCancelledError("abc"))
    assert cancelled.code == ErrorCode.UNAVAILABLE and "cancelled" in cancelled.message
