"""One local Ray + Serve for this package: the example repository plus test models, served over HTTP and
gRPC; the HTTP, gRPC and handle test modules share it."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient

from cluster.examples import onnx_mlp
from cluster.stores import LocalStore
from deployments.runner import ModelRunner
from tests.conftest import copy_example_repository, write_model
from tests.integration.conftest import serve_repository

MAX_REQUEST_BYTES = 1 << 20

FLAKY = """
def infer(inputs):
    if (inputs["X"] < 0).any():
        raise ValueError("negative input")
    return {"Y": inputs["X"] * 2}
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
    write_model(root, "broken_config", "max_batch_sise: 4", {"1/model.onnx": onnx_mlp()})
    write_model(root, "broken_model", 'platform: "onnxruntime_onnx"', {"1/model.onnx": b"garbage"})
    return root


@pytest.fixture(scope="package")
def endpoints(repository):
    with serve_repository(repository, max_request_bytes=MAX_REQUEST_BYTES) as endpoints:
        yield endpoints


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
