"""A Python model in a stub process of its own (ProcessBackend, through an isolated ModelRunner), real
processes, no Ray: it answers as in process, Triton's form and the plain one; a crash in its code fails
the request in it, and the next request starts a fresh process; a wedged batch ends with its process when
aborted; a model that fails to load says why."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from cluster.repository.local_store import LocalStore
from deployments.backends.process import ProcessBackend
from deployments.errors import ErrorCode, InferenceError
from deployments.serving.runner import ModelRunner
from tests.conftest import FLAKY_PYTHON_MODEL, write_model
from tests.unit.conftest import run

CONFIG = ("backend: python\nmax_batch_size: 8\ninput: [{name: X, data_type: TYPE_FP32, dims: [1]}]\n"
          "output: [{name: Y, data_type: TYPE_FP32, dims: [1]}]\n")
TRITON = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", x * 2)]))
        return out
"""


def isolated(root, name) -> ModelRunner:
    store = LocalStore(root)
    model = ModelRunner(store.config(name), store, isolated=True)
    model.load()
    return model


@pytest.fixture
def plain(tmp_path):
    config = CONFIG.replace("output: [{name: Y, data_type: TYPE_FP32, dims: [1]}]",
                            "output: [{name: Y, data_type: TYPE_FP32, dims: [1]}, "
                            "{name: PID, data_type: TYPE_INT64, dims: [1]}]")
    write_model(tmp_path, "plain", config, {"1/model.py": FLAKY_PYTHON_MODEL}, config_name="config.yaml")
    model = isolated(tmp_path, "plain")
    yield model
    model.unload_all("test over")


def x(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"X": np.full((rows, 1), value, np.float32)}


def test_a_stub_answers_as_in_process_in_a_process_of_its_own(plain, tmp_path):
    (backend,) = plain.backends.values()
    assert isinstance(backend, ProcessBackend)
    answer = run(plain, x(2.0, rows=3))
    np.testing.assert_array_equal(answer["Y"], np.full((3, 1), 3.0, np.float32))
    assert int(answer["PID"][0, 0]) not in (0, os.getpid())
    write_model(tmp_path, "triton", CONFIG, {"1/model.py": TRITON}, config_name="config.yaml")
    triton = isolated(tmp_path, "triton")
    try:
        np.testing.assert_array_equal(run(triton, x(4.0))["Y"], [[8.0]])
    finally:
        triton.unload_all("test over")


def test_a_crash_fails_the_request_in_it_and_the_next_request_starts_a_fresh_process(plain):
    before = int(run(plain, x(1.0))["PID"][0, 0])
    with pytest.raises(InferenceError) as error:
        run(plain, x(13.0))
    assert error.value.code == ErrorCode.UNAVAILABLE
    assert "stub process exited (exit code 3)" in error.value.message and "'plain'" in error.value.message
    after = int(run(plain, x(1.0))["PID"][0, 0])
    assert after != before


def test_an_aborted_wedged_batch_fails_and_the_model_answers_again(plain):
    failed = []

    def wedge():
        try:
            run(plain, x(7.0))
        except InferenceError as exc:
            failed.append(exc)

    caller = threading.Thread(target=wedge)
    caller.start()
    time.sleep(1.0)  # the batch is in the stub, sleeping
    assert plain.abort_isolated("was stopped after the batch ran past its execution timeout of 1 s")
    caller.join(timeout=30)
    assert not caller.is_alive()
    assert failed and "stub process was stopped after the batch ran past its execution timeout" in failed[0].message
    assert run(plain, x(1.0))["Y"][0, 0] == 2.0


def test_a_model_that_fails_to_load_in_its_stub_says_why(tmp_path):
    write_model(tmp_path, "broken", CONFIG, {"1/model.py": "raise ValueError('no weights here')\n"},
                config_name="config.yaml")
    model = isolated(tmp_path, "broken")
    assert not model.ready and "no weights here" in model.reason
