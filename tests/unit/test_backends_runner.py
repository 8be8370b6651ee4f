"""Backends and the in-process ModelRunner on real onnxruntime, torch and Python models (no Ray)."""

from __future__ import annotations


import numpy as np
import pytest

from cluster.repository.examples import onnx_add_sub, onnx_mlp
from deployments.config.model_config import ConfigError
from deployments.errors import ErrorCode, InferenceError, without_paths
from tests.conftest import write_model
from tests.unit.conftest import run, runner


def mlp_reference(x: np.ndarray) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(onnx_mlp()).graph.initializer}
    hidden = np.maximum(x @ weights["w0"] + weights["b0"], 0)
    return hidden @ weights["w1"] + weights["b1"]


def test_onnx_config_is_auto_completed_from_the_model(tmp_path):
    write_model(tmp_path, "auto", 'platform: "onnxruntime_onnx"', {"1/model.onnx": onnx_mlp()})
    model = runner(tmp_path, "auto")
    config = model.config
    assert config.max_batch_size == 4 and config.dynamic_batching is not None  # Triton's defaults
    assert [(t.name, t.data_type, t.dims) for t in config.input] == [("INPUT0", "TYPE_FP32", [64])]
    assert [(t.name, t.data_type, t.dims) for t in config.output] == [("OUTPUT0", "TYPE_FP32", [10])]
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(run(model, {"INPUT0": x})["OUTPUT0"], mlp_reference(x), rtol=1e-4, atol=1e-5)


def test_model_folder_without_a_config_is_completed_too(tmp_path):
    (tmp_path / "bare" / "1").mkdir(parents=True)
    (tmp_path / "bare" / "1" / "model.onnx").write_bytes(onnx_add_sub())
    model = runner(tmp_path, "bare")
    out = run(model, {"INPUT0": np.full((2, 16), 5, np.int32), "INPUT1": np.full((2, 16), 2, np.int32)})
    assert out["OUTPUT0"].tolist() == [[7] * 16] * 2 and out["OUTPUT1"].tolist() == [[3] * 16] * 2


def test_configured_tensors_are_checked_against_the_onnx_model(tmp_path):
    config = ('platform: "onnxruntime_onnx" max_batch_size: 4 '
              'input [ { name: "WRONG", data_type: TYPE_FP32, dims: [64] } ] '
              'output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [10] } ]')
    write_model(tmp_path, "m", config, {"1/model.onnx": onnx_mlp()})
    model = runner(tmp_path, "m")
    assert not model.ready
    (row,) = model.index()
    assert row["state"] == "UNAVAILABLE"
    assert "input[0].name" in row["reason"] and "no input 'WRONG'" in row["reason"]
    with pytest.raises(InferenceError) as info:
        model.prepare({"WRONG": np.zeros((1, 64), np.float32)})
    assert info.value.code == ErrorCode.UNAVAILABLE


def test_corrupt_model_file_is_reported_not_raised(tmp_path):
    write_model(tmp_path, "bad", 'platform: "onnxruntime_onnx"', {"1/model.onnx": b"not an onnx file"})
    model = runner(tmp_path, "bad")
    assert not model.ready and "failed to load" in model.index()[0]["reason"]


def test_versions_follow_the_policy_and_routes_reach_each(tmp_path):
    config = 'platform: "onnxruntime_onnx" version_policy { all { } }'
    write_model(tmp_path, "v", config, {"1/model.onnx": onnx_mlp(seed=1), "2/model.onnx": onnx_mlp(seed=2)})
    model = runner(tmp_path, "v")
    x = np.ones((1, 64), np.float32)
    one, two, newest = (run(model, {"INPUT0": x}, version=v)["OUTPUT0"] for v in ("1", 2, None))
    assert not np.allclose(one, two)
    np.testing.assert_array_equal(two, newest)
    with pytest.raises(InferenceError) as info:
        run(model, {"INPUT0": x}, version=3)
    assert info.value.code == ErrorCode.NOT_FOUND
    assert model.metadata()["versions"] == ["1", "2"]


def test_requests_with_the_same_signature_run_as_one_batch(example_root):
    model = runner(example_root, "mlp")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 64)).astype(np.float32) for n in (1, 2, 3)]
    odd = rng.standard_normal((1, 64)).astype(np.float64)  # different dtype: rejected before batching
    with pytest.raises(InferenceError, match="FP64"):
        model.prepare({"INPUT0": odd})
    results = model.execute([model.prepare({"INPUT0": x}) for x in xs])
    for x, result in zip(xs, results):
        np.testing.assert_allclose(result["OUTPUT0"], mlp_reference(x), rtol=1e-4, atol=1e-5)
    stats = model.stats[1]
    assert stats.execution_count == 1 and stats.inference_count == 6 and stats.success.count == 3
    assert stats.queue.count == stats.compute_infer.count == 3 and stats.compute_infer.ns > 0
    assert list(stats.batches) == [6] and stats.batches[6].compute_infer.count == 1


def test_requested_outputs_only(example_root):
    model = runner(example_root, "simple")
    ones = np.ones((1, 16), np.int32)
    assert list(run(model, {"INPUT0": ones, "INPUT1": ones}, outputs=["OUTPUT1"])) == ["OUTPUT1"]


def test_torchscript_indexed_names(example_root):
    import torch

    model = runner(example_root, "linear_torch")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    reference = torch.jit.load(str(example_root / "linear_torch" / "1" / "model.pt"))(torch.from_numpy(x))
    np.testing.assert_allclose(run(model, {"INPUT__0": x})["OUTPUT__0"], reference.detach().numpy(), rtol=1e-6)


def test_torchscript_named_forward_arguments_and_bf16(tmp_path):
    import io

    import ml_dtypes
    import torch

    class Mix(torch.nn.Module):
        def forward(self, scale: torch.Tensor, values: torch.Tensor):
            return values * scale, (values * scale).to(torch.bfloat16)

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Mix()), buffer)
    config = """backend: pytorch
max_batch_size: 4
input: [{name: values, data_type: TYPE_FP32, dims: [3]}, {name: scale, data_type: TYPE_FP32, dims: [1]}]
output: [{name: scaled, data_type: TYPE_FP32, dims: [3]}, {name: scaled_bf16, data_type: TYPE_BF16, dims: [3]}]
"""
    write_model(tmp_path, "mix", config, {"1/model.pt": buffer.getvalue()}, config_name="config.yaml")
    out = run(runner(tmp_path, "mix"), {"values": np.array([[1, 2, 3]], np.float32), "scale": np.array([[2]], np.float32)})
    assert out["scaled"].tolist() == [[2, 4, 6]]
    assert out["scaled_bf16"].dtype == ml_dtypes.bfloat16 and out["scaled_bf16"].astype(np.float32).tolist() == [[2, 4, 6]]


def test_triton_python_model_with_bytes(example_root):
    model = runner(example_root, "text_stats")
    out = run(model, {"TEXT": np.array([[b"abc"], [b"hello"]], dtype=object)})
    assert out["UPPER"].tolist() == [[b"ABC"], [b"HELLO"]] and out["LENGTH"].tolist() == [[3], [5]]


PLAIN = """
import numpy as np

def infer(inputs):
    x = inputs["X"]
    if (x < 0).any():
        raise ValueError("negative input")
    return {"Y": x * 2}
"""


def test_plain_python_model_and_backend_errors_fail_only_their_batch(tmp_path):
    config = ('backend: "python" max_batch_size: 8 dynamic_batching { } '
              'input [ { name: "X", data_type: TYPE_INT64, dims: [1] } ] '
              'output [ { name: "Y", data_type: TYPE_INT64, dims: [1] } ]')
    write_model(tmp_path, "plain", config, {"1/model.py": PLAIN})
    model = runner(tmp_path, "plain")
    good = model.prepare({"X": np.array([[1], [2]])})
    bad = model.prepare({"X": np.array([[-1]])})
    good_other_shape = model.prepare({"X": np.array([[3]], np.int64)})
    results = model.execute([good, bad])
    assert all(isinstance(r, InferenceError) for r in results)
    assert results[0].code == ErrorCode.INTERNAL
    assert str(results[0]) == "model 'plain' version 1 failed: ValueError (the server log has the details)"
    assert run(model, {"X": np.array([[3]])})["Y"].tolist() == [[6]]  # still serving
    assert model.execute([good_other_shape])[0]["Y"].tolist() == [[6]]


def test_python_model_without_an_entry_point(tmp_path):
    config = ('backend: "python" input [ { name: "X", data_type: TYPE_INT64, dims: [1] } ] '
              'output [ { name: "Y", data_type: TYPE_INT64, dims: [1] } ]')
    write_model(tmp_path, "empty", config, {"1/model.py": "x = 1\n"})
    assert "TritonPythonModel or a function infer" in runner(tmp_path, "empty").index()[0]["reason"]


def test_a_python_model_using_what_pb_utils_does_not_serve_is_refused_at_load_by_name(tmp_path):
    config = ('backend: "python" input [ { name: "X", data_type: TYPE_INT64, dims: [1] } ] '
              'output [ { name: "Y", data_type: TYPE_INT64, dims: [1] } ]')
    source = ("import triton_python_backend_utils as pb\nfrom triton_python_backend_utils import Tensor, Nope\n"
              "class TritonPythonModel:\n    def execute(self, requests):\n        return pb.get_model_dir(), "
              "pb.MetricFamily.COUNTER, pb.InferenceResponse\n")
    write_model(tmp_path, "unserved", config, {"1/model.py": source})
    (row,) = runner(tmp_path, "unserved").index()
    assert row["state"] == "UNAVAILABLE" and "uses pb_utils.Nope, pb_utils.get_model_dir, which" in row["reason"]


def test_tensorrt_backend_needs_a_gpu(tmp_path):
    write_model(tmp_path, "plan", 'platform: "tensorrt_plan"', {"1/model.plan": b"engine"})
    reason = runner(tmp_path, "plan").index()[0]["reason"]
    assert "tensorrt" in reason  # not installed here, or no GPU: either way the reason says so


SENDER = """
import threading
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            n = int(pb_utils.get_input_tensor_by_name(request, "N").as_numpy()[0])
            if n < 0:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("negative")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue

            def later():  # Triton models may answer from a thread of their own, after execute returns
                for i in range(n):
                    sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([i], np.int32))]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            threading.Thread(target=later).start()
        return None
"""

GENERATOR = """
import numpy as np


def infer(inputs):
    for i in range(int(inputs["N"][0])):
        yield {"Y": np.array([i * 10], np.int32), "IGNORED": np.zeros(1)}
"""

DECOUPLED = ('backend: "python" model_transaction_policy { decoupled: true } '
             'input [ { name: "N", data_type: TYPE_INT32, dims: [ 1 ] } ] '
             'output [ { name: "Y", data_type: TYPE_INT32, dims: [ 1 ] } ]')


@pytest.mark.parametrize("source, expected", [(SENDER, [0, 1, 2]), (GENERATOR, [0, 10, 20])])
def test_decoupled_python_models_stream_their_responses(tmp_path, source, expected):
    import threading

    write_model(tmp_path, "streamer", DECOUPLED, {"1/model.py": source})
    model = runner(tmp_path, "streamer")
    answers, done = [], threading.Event()

    def emit(outputs, final):
        answers.append(outputs)
        if final:
            done.set()

    model.execute_stream(model.prepare({"N": np.array([3], np.int32)}), emit)
    assert done.wait(10)
    assert [int(a["Y"][0]) for a in answers if a is not None] == expected
    assert all(set(a) == {"Y"} for a in answers if a is not None)
    assert model.stats[1].success.count == 1 and model.stats[1].execution_count == 1
    if source is SENDER:  # an error response, then nothing more
        failed = []
        model.execute_stream(model.prepare({"N": np.array([-1], np.int32)}), lambda out, final: failed.append(out))
        assert isinstance(failed[0], InferenceError) and failed[0].message == "negative"


def test_decoupled_models_need_the_python_backend(tmp_path):
    from deployments.config.model_config import parse_pbtxt

    config = parse_pbtxt('platform: "onnxruntime_onnx" model_transaction_policy { decoupled: true } '
                         'input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ] '
                         'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]', "m", "m")
    with pytest.raises(ConfigError, match="Python-backend"):
        config.check("m")


def test_client_messages_lose_absolute_paths_and_length():
    text = "Load model from /home/me/.cache/ric/m/1/model.onnx failed: /usr/lib/x.so: bad, see ./rel/path"
    assert without_paths(text) == "Load model from .../1/model.onnx failed: .../lib/x.so: bad, see ./rel/path"
    assert without_paths("x" * 500) == "x" * 397 + "..."
