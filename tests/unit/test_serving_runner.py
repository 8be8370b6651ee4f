"""ModelRunner's versions in one process: an update swaps versions while requests in flight finish on theirs,
a new config reloads every served version, a broken version leaves the old one serving, and warm-up runs
before a version serves (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.repository.examples import onnx_mlp
from deployments.errors import InferenceError
from tests.conftest import write_model
from tests.unit.conftest import run, runner


def test_update_swaps_versions_and_in_flight_requests_finish_on_theirs(tmp_path):
    write_model(tmp_path, "live", 'platform: "onnxruntime_onnx"', {"1/model.onnx": onnx_mlp(seed=1)})
    model = runner(tmp_path, "live")
    x = np.ones((1, 64), np.float32)
    old_answer = run(model, {"INPUT0": x})["OUTPUT0"]
    in_flight = model.prepare({"INPUT0": x})  # checked against version 1, not yet run
    write_model(tmp_path, "live", 'platform: "onnxruntime_onnx"', {"2/model.onnx": onnx_mlp(seed=2)})
    model.update([2])
    assert sorted(model.backends) == [2] and [r["version"] for r in model.index()] == ["2"]
    (finished,) = model.execute([in_flight])
    np.testing.assert_array_equal(finished["OUTPUT0"], old_answer)  # answered by version 1
    assert model.prepare({"INPUT0": x}).version == 2
    assert not model._retired  # version 1 unloaded once its last request ran


def test_a_new_config_reloads_every_served_version_under_it(tmp_path):
    from deployments.config.model_config import parse_pbtxt

    write_model(tmp_path, "live", 'platform: "onnxruntime_onnx" max_batch_size: 8', {"1/model.onnx": onnx_mlp()})
    model = runner(tmp_path, "live")
    old_backend = model.backends[1]
    in_flight = model.prepare({"INPUT0": np.ones((4, 64), np.float32)})  # 4 rows pass under max_batch_size 8
    model.update([1], config=parse_pbtxt('platform: "onnxruntime_onnx" max_batch_size: 2', "new", "live"))
    assert model.config.max_batch_size == 2 and model.backends[1] is not old_backend
    with pytest.raises(InferenceError, match="batch size"):
        model.prepare({"INPUT0": np.ones((4, 64), np.float32)})
    (finished,) = model.execute([in_flight])  # the request checked under the old config finishes on it
    assert finished["OUTPUT0"].shape == (4, 10)
    reloaded = model.backends[1]
    model.update([1], config=model.base_config)  # the same config again: nothing reloads
    assert model.backends[1] is reloaded and not model._retired


def test_a_broken_new_version_is_reported_and_the_old_one_serves_on(tmp_path):
    write_model(tmp_path, "live", 'platform: "onnxruntime_onnx"', {"1/model.onnx": onnx_mlp(seed=1)})
    model = runner(tmp_path, "live")
    write_model(tmp_path, "live", 'platform: "onnxruntime_onnx"', {"2/model.onnx": b"corrupt"})
    model.update([2])
    assert sorted(model.backends) == [1]
    states = {row["version"]: row for row in model.index()}
    assert states["1"]["state"] == "READY"
    assert states["2"]["state"] == "UNAVAILABLE" and "failed to load" in states["2"]["reason"]
    assert run(model, {"INPUT0": np.ones((1, 64), np.float32)})["OUTPUT0"].shape == (1, 10)


def test_warm_up_requests_follow_model_warmup_or_the_configured_shape():
    from deployments.config.model_config import parse_pbtxt
    from deployments.serving.warmup import warmup_requests

    plain = parse_pbtxt('max_batch_size: 4 input [ { name: "X", data_type: TYPE_FP32, dims: [ -1, 3 ] } ] '
                        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 3 ] } ]', "m", "m")
    ((inputs, count),) = warmup_requests(plain)
    assert inputs["X"].shape == (1, 1, 3) and count == 1
    configured = parse_pbtxt(
        'max_batch_size: 4 input [ { name: "X", data_type: TYPE_FP32, dims: [ 3 ] } ] '
        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 3 ] } ] '
        'model_warmup [ { name: "w" batch_size: 2 count: 3 inputs { key: "X" value: '
        '{ data_type: TYPE_FP32 dims: [ 3 ] random_data: true } } } ]', "m", "m")
    ((inputs, count),) = warmup_requests(configured)
    assert inputs["X"].shape == (2, 3) and inputs["X"].dtype == np.float32 and count == 3


COUNTING = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.calls = 0

    def execute(self, requests):
        self.calls += 1
        responses = []
        for request in requests:
            start = pb_utils.get_input_tensor_by_name(request, "START")
            if start is None:  # a sequence model: every request carries its control tensors
                raise ValueError("no START control tensor")
            rows = pb_utils.get_input_tensor_by_name(request, "X").as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("CALLS", np.full((rows, 1), self.calls))]))
        return responses
"""

COUNTING_CONFIG = """backend: "python" max_batch_size: 4
sequence_batching { control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START
                    int32_false_true: [ 0, 1 ] } ] } ] }
input [ { name: "X", data_type: TYPE_FP32, dims: [ 3 ] } ]
output [ { name: "CALLS", data_type: TYPE_INT64, dims: [ 1 ] } ]
"""


def test_model_warmup_runs_at_first_load_and_sequence_models_warm_up_with_their_controls(tmp_path):
    """As Triton: configured warm-up samples run before the first load is ready (3 here); a live update
    warms up too, and a sequence model's warm-up request carries its control tensors."""
    warmup = ('model_warmup [ { name: "w" batch_size: 2 count: 3 inputs { key: "X" value: '
              '{ data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } } } ]')
    write_model(tmp_path, "counting", COUNTING_CONFIG + warmup, {"1/model.py": COUNTING, "2/model.py": COUNTING})
    model = runner(tmp_path, "counting")
    assert sorted(model.backends) == [2]
    (result,) = model.backends[2].execute([{"X": np.zeros((1, 3), np.float32), "START": np.ones((1, 1), np.int32)}])
    assert result["CALLS"][0, 0] == 4
    model.update([1, 2])
    assert model.states[1].state == "READY", model.states[1].reason
