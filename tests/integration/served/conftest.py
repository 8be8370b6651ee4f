"""One local Ray + Serve for this package: the example repository plus test models, served over HTTP and
gRPC; the HTTP, gRPC and handle test modules share it."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

from cluster.repository.examples import onnx_accumulator, onnx_mlp
from cluster.repository.local_store import LocalStore
from deployments.serving.runner import ModelRunner
from tests.conftest import copy_example_repository, write_model
from tests.integration.conftest import serve_repository

MAX_REQUEST_BYTES = 1 << 20

FLAKY = """
def infer(inputs):
    if (inputs["X"] < 0).any():
        raise ValueError("negative input")
    return {"Y": inputs["X"] * 2}
"""


PARAMS = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "X").as_numpy().shape[0]
            params = np.array([[request.parameters().encode()]] * rows, dtype=object)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PARAMS", params)]))
        return responses
"""

# Triton's sequence batcher: a running sum per sequence, reset by START; answers which process served it
# and the correlation id it was given (CORRID as a string, so integer and string ids both reach it).
ACCUMULATE = """
import os
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            get = lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            corrid = get("CORRID")[0, 0]
            if get("START")[0, 0]:
                self.sums[corrid] = 0
            self.sums[corrid] += int(get("X").sum())
            rows = get("X").shape[0]
            tensors = [pb_utils.Tensor("SUM", np.full((rows, 1), self.sums[corrid], np.int64)),
                       pb_utils.Tensor("PID", np.full((rows, 1), os.getpid(), np.int64)),
                       pb_utils.Tensor("ENDED", get("END").astype(np.bool_)),
                       pb_utils.Tensor("ID", np.full((rows, 1), corrid, dtype=object))]
            if get("END")[0, 0]:
                del self.sums[corrid]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
"""

ACCUMULATE_CONFIG = """
backend: "python"
max_batch_size: 4
instance_group [ { count: 2 } ]
sequence_batching {
  max_sequence_idle_microseconds: 1500000
  oldest { max_queue_delay_microseconds: 1000 }
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] }
  ]
}
input [ { name: "X" data_type: TYPE_INT64 dims: [ 1 ] } ]
output [
  { name: "SUM" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "PID" data_type: TYPE_INT64 dims: [ 1 ] },
  { name: "ENDED" data_type: TYPE_BOOL dims: [ 1 ] },
  { name: "ID" data_type: TYPE_STRING dims: [ 1 ] }
]
"""

# A decoupled model in the plain form: a generator of responses, one per step, failing at step FAIL_AT.
COUNTDOWN = """
import numpy as np


def infer(inputs):
    start = int(inputs["N"][0])
    for step in range(start, 0, -1):
        if step == int(inputs["FAIL_AT"][0]):
            raise ValueError("countdown broke")
        yield {"STEP": np.array([step], np.int32)}
"""

COUNTDOWN_CONFIG = """
backend: "python"
model_transaction_policy { decoupled: true }
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] }, { name: "FAIL_AT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "STEP" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

# Counts the times it ran: an answer from the response cache repeats the count it was first given.
CACHED = """
import numpy as np

calls = 0


def infer(inputs):
    global calls
    calls += 1
    return {"CALLS": np.full((inputs["X"].shape[0], 1), calls, np.int64)}
"""

# Runs one request at a time, slowly, and says in which order it ran them.
ORDERED = """
import time
import numpy as np

ran = 0


def infer(inputs):
    global ran
    time.sleep(0.3)
    ran += 1
    return {"ORDER": np.full((inputs["X"].shape[0], 1), ran, np.int64)}
"""

ECHO = """
def infer(inputs):
    return {name.replace("IN_", "OUT_"): array for name, array in inputs.items()}
"""

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]


def echo_config() -> str:
    tensors = lambda prefix: ", ".join(  # noqa: E731
        f'{{ name: "{prefix}{t}", data_type: TYPE_{"STRING" if t == "BYTES" else t}, dims: [ -1 ] }}' for t in DATATYPES)
    return f'backend: "python" max_batch_size: 8 input [ {tensors("IN_")} ] output [ {tensors("OUT_")} ]'


def ensemble_config(inputs: str, outputs: str, steps: list[tuple[str, dict, dict]], max_batch_size=8) -> str:
    """An ensemble config.pbtxt; each step is (model, input_map, output_map)."""
    def maps(kind, mapping):
        return " ".join(f'{kind} {{ key: "{k}" value: "{v}" }}' for k, v in mapping.items())
    step_text = ", ".join(f'{{ model_name: "{m}" model_version: -1 {maps("input_map", i)} {maps("output_map", o)} }}'
                          for m, i, o in steps)
    return (f'platform: "ensemble" max_batch_size: {max_batch_size} input [ {inputs} ] output [ {outputs} ] '
            f'ensemble_scheduling {{ step [ {step_text} ] }}')


INT16 = lambda *names: ", ".join(f'{{ name: "{n}", data_type: TYPE_INT32, dims: [ 16 ] }}' for n in names)  # noqa: E731

ENSEMBLES = {
    # simple twice in a row: (A+B, A-B) -> (2A, 2B)
    "chain": ensemble_config(INT16("A", "B"), INT16("SUM2", "DIFF2"), [
        ("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "s", "OUTPUT1": "d"}),
        ("simple", {"INPUT0": "s", "INPUT1": "d"}, {"OUTPUT0": "SUM2", "OUTPUT1": "DIFF2"}),
    ]),
    # two independent branches joined by a third step, listed join-first
    "diamond": ensemble_config(INT16("A", "B"), INT16("OUT"), [
        ("simple", {"INPUT0": "x", "INPUT1": "y"}, {"OUTPUT0": "OUT"}),
        ("simple", {"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "x"}),
        ("simple", {"INPUT0": "B", "INPUT1": "A"}, {"OUTPUT1": "y"}),
    ]),
    # an ensemble as a step of another: chain's (2A, 2B), then simple: (2A + 2B, 2A - 2B)
    "nested": ensemble_config(INT16("A", "B"), INT16("SUM", "DIFF"), [
        ("chain", {"A": "A", "B": "B"}, {"SUM2": "a2", "DIFF2": "b2"}),
        ("simple", {"INPUT0": "a2", "INPUT1": "b2"}, {"OUTPUT0": "SUM", "OUTPUT1": "DIFF"}),
    ]),
    "failing": ensemble_config('{ name: "X", data_type: TYPE_INT64, dims: [ 1 ] }',
                               '{ name: "Y", data_type: TYPE_INT64, dims: [ 1 ] }',
                               [("flaky", {"X": "X"}, {"Y": "Y"})]),
    "missing_step": ensemble_config(INT16("A"), INT16("OUT"), [("nope", {"INPUT0": "A"}, {"OUTPUT0": "OUT"})]),
    "bad_types": ensemble_config('{ name: "A", data_type: TYPE_FP32, dims: [ 16 ] }', INT16("OUT"),
                                 [("simple", {"INPUT0": "A", "INPUT1": "A"}, {"OUTPUT0": "OUT"})]),
    # the detector's crops go to a classifier that waits 200 ms to batch across requests
    "classify_batched": ensemble_config(
        '{ name: "IMAGE", data_type: TYPE_FP32, dims: [ -1, 64 ] }',
        '{ name: "SCORES", data_type: TYPE_FP32, dims: [ -1, 10 ] }',
        [("detector", {"IMAGE": "IMAGE"}, {"CROPS": "crops"}), ("batched_mlp", {"INPUT0": "crops"}, {"OUTPUT0": "SCORES"})],
        max_batch_size=0),
}


@pytest.fixture(scope="package")
def repository(tmp_path_factory):
    root = copy_example_repository(tmp_path_factory.mktemp("repo") / "models")
    # A batching MLP that waits long enough (200 ms) for concurrent requests to share batches.
    write_model(root, "batched_mlp", 'platform: "onnxruntime_onnx" max_batch_size: 64 '
                'dynamic_batching { max_queue_delay_microseconds: 200000 }', {"1/model.onnx": onnx_mlp()})
    write_model(root, "flaky", 'backend: "python" max_batch_size: 8 instance_group [ { count: 2 } ] '
                'input [ { name: "X", data_type: TYPE_INT64, dims: [1] } ] '
                'output [ { name: "Y", data_type: TYPE_INT64, dims: [1] } ]', {"1/model.py": FLAKY})
    write_model(root, "echo", echo_config(), {"1/model.py": ECHO})
    write_model(root, "accumulate", ACCUMULATE_CONFIG, {"1/model.py": ACCUMULATE})
    write_model(root, "countdown", COUNTDOWN_CONFIG, {"1/model.py": COUNTDOWN})
    write_model(root, "stateful", 'platform: "onnxruntime_onnx" max_batch_size: 4 sequence_batching { '
                'control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] '
                '} ] } ] state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 '
                'dims: [ 1 ] } ] } input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ] '
                'output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]', {"1/model.onnx": onnx_accumulator()})
    write_model(root, "prioritized", 'backend: "python" max_batch_size: 1 '
                'dynamic_batching { priority_levels: 2 default_priority_level: 2 } '
                'input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ] '
                'output [ { name: "ORDER", data_type: TYPE_INT64, dims: [ 1 ] } ]', {"1/model.py": ORDERED})
    write_model(root, "cached", 'backend: "python" max_batch_size: 4 response_cache { enable: true } '
                'input [ { name: "X", data_type: TYPE_FP32, dims: [ 2 ] } ] '
                'output [ { name: "CALLS", data_type: TYPE_INT64, dims: [ 1 ] } ]', {"1/model.py": CACHED})
    write_model(root, "params", 'backend: "python" max_batch_size: 8 '
                'input [ { name: "X", data_type: TYPE_INT32, dims: [ 1 ] } ] '
                'output [ { name: "PARAMS", data_type: TYPE_STRING, dims: [ 1 ] } ]', {"1/model.py": PARAMS})
    for name, config in ENSEMBLES.items():
        write_model(root, name, config, {})
    write_model(root, "broken_config", "max_batch_sise: 4", {"1/model.onnx": onnx_mlp()})
    write_model(root, "broken_model", 'platform: "onnxruntime_onnx"', {"1/model.onnx": b"garbage"})
    return root


@pytest.fixture(scope="package")
def trace_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("traces")


@pytest.fixture(scope="package")
def endpoints(repository, trace_dir):
    # 25 replicas at 0.25 logical CPUs each (the real work shares this machine's cores). The Ingress colocates
    # the CPU models, so HTTP and gRPC run them in the Ingress replica and handles reach their deployments;
    # tests/integration/live serves without colocation.
    with serve_repository(repository, num_cpus=8, max_request_bytes=MAX_REQUEST_BYTES, colocate=True,
                          trace_dir=str(trace_dir)) as endpoints:
        yield endpoints


@pytest.fixture(params=["http", "grpc"])
def transport(request, endpoints):
    """(tritonclient module, a client of it): the test runs once over each transport."""
    import tritonclient.grpc as grpcclient

    if request.param == "http":
        return httpclient, httpclient.InferenceServerClient(endpoints.http.removeprefix("http://"))
    return grpcclient, grpcclient.InferenceServerClient(endpoints.grpc)


@pytest.fixture(scope="package")
def server(endpoints):
    return endpoints.http


@pytest.fixture(scope="package")
def client(server):
    return httpclient.InferenceServerClient(server.removeprefix("http://"), concurrency=4)


def local(repository, name):
    """The same model run in this process, as the reference for server answers."""
    store = LocalStore(repository)
    runner = ModelRunner(store.config(name), store)
    runner.load()
    return runner


def reference(repository, name, inputs):
    runner = local(repository, name)
    (result,) = runner.execute([runner.prepare(dict(inputs))])
    return result


CASES = {
    "mlp": {"INPUT0": np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)},
    "simple": {"INPUT0": np.arange(32, dtype=np.int32).reshape(2, 16), "INPUT1": np.ones((2, 16), np.int32)},
    "linear_torch": {"INPUT__0": np.arange(8, dtype=np.float32).reshape(2, 4)},
    "text_stats": {"TEXT": np.array([[b"abc"], ["héllo".encode()]], dtype=object)},
}


def echo_inputs(rows=2):
    rng = np.random.default_rng(3)
    arrays = {}
    for datatype in DATATYPES:
        name = f"IN_{datatype}"
        if datatype == "BYTES":
            arrays[name] = np.array([[b"x" * i, "é".encode()] for i in range(rows)], dtype=object)
        elif datatype == "BOOL":
            arrays[name] = rng.integers(0, 2, (rows, 2)).astype(bool)
        else:
            dtype = httpclient.triton_to_np_dtype(datatype)
            arrays[name] = (rng.standard_normal((rows, 2)) * 50).astype(dtype)
    return arrays
