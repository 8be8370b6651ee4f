"""A Python model in a stub process of its own (ProcessBackend, through an isolated ModelRunner), real
processes, no Ray: it answers as in process, Triton's form and the plain one; a crash in its code fails
the request in it, and the next request starts a fresh process; a wedged batch ends with its process when
aborted; a model that fails to load says why. Batches from an event loop (how the ingress runs them) are
written and read on it, with no thread unless their tensors are large."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import pickle
import threading
import time

import ml_dtypes
import numpy as np
import pytest
import uvloop

from cluster.repository.local_store import LocalStore
from deployments.backends import Outputs, RequestInfo
from deployments.backends.channel import LOOP_BYTES
from deployments.backends.process import COUNTED_ELEMENTS, ProcessBackend, _batch_bytes
from deployments.backends.stub import packed, unpacked
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


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """An executor counting the work handed to it (every one of the tests' stubs' I/O threads)."""

    submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        CountingExecutor.submitted += 1
        return super().submit(fn, *args, **kwargs)


def counted(*models: ModelRunner) -> None:
    """The models' stubs, with I/O threads and the loop's default pool that count what they are given."""
    for model in models:
        for backend in model.backends.values():
            backend._io = CountingExecutor(max_workers=1)


WIDE = """
import numpy as np

def infer(inputs):
    x = inputs["X"]
    return {"Y": np.repeat(x, int(x.max()), axis=1)}
"""


def test_batches_from_the_event_loop_take_no_thread_unless_their_tensors_are_large(plain, tmp_path):
    write_model(tmp_path, "wide", CONFIG.replace("dims: [1]}]\n", "dims: [-1]}]\n", 1)
                .replace("output: [{name: Y, data_type: TYPE_FP32, dims: [1]}]", "output: [{name: Y, "
                         "data_type: TYPE_FP32, dims: [-1]}]"), {"1/model.py": WIDE}, config_name="config.yaml")
    wide = isolated(tmp_path, "wide")
    large = LOOP_BYTES // 4 + 1  # float32 elements

    async def batches():
        asyncio.get_running_loop().set_default_executor(CountingExecutor(max_workers=2))
        counted(plain, wide)
        answers = []
        for model, inputs in ((plain, x(2.0, rows=3)), (wide, x(3.0)), (wide, {"X": np.ones((1, large), np.float32)}),
                              (wide, x(float(large)))):
            before = CountingExecutor.submitted
            (answer,) = await model.execute_async([model.prepare(inputs)])
            answers.append((answer, CountingExecutor.submitted - before))
        return answers

    try:
        (small, small_threads), (three, three_threads), (big_in, in_threads), (big_out, out_threads) = \
            uvloop.run(batches())
    finally:
        wide.unload_all("test over")
    np.testing.assert_array_equal(small["Y"], np.full((3, 1), 3.0, np.float32))
    np.testing.assert_array_equal(three["Y"], np.full((1, 3), 3.0, np.float32))
    assert small_threads == three_threads == 0  # written and read on the loop
    assert big_in["Y"].shape == (1, large) and in_threads == 1  # the whole batch on a thread
    assert big_out["Y"].shape == (1, large) and out_threads == 1  # the answer read on a thread


def test_a_crash_or_an_abort_in_a_batch_from_the_event_loop_fails_it_and_the_next_starts_a_stub(plain):
    async def batches():
        (crashed,) = await plain.execute_async([plain.prepare(x(13.0))])
        wedged = asyncio.ensure_future(plain.execute_async([plain.prepare(x(7.0))]))
        await asyncio.sleep(1.0)  # the batch is in the stub, sleeping, the loop free meanwhile
        assert not wedged.done()
        assert plain.abort_isolated("was stopped after the batch ran past its execution timeout of 1 s")
        (aborted,) = await asyncio.wait_for(wedged, 30)
        (answer,) = await plain.execute_async([plain.prepare(x(1.0))])
        return crashed, aborted, answer

    crashed, aborted, answer = uvloop.run(batches())
    assert isinstance(crashed, InferenceError) and crashed.code == ErrorCode.UNAVAILABLE
    assert "stub process exited (exit code 3)" in crashed.message
    assert isinstance(aborted, InferenceError)
    assert "stub process was stopped after the batch ran past" in aborted.message
    assert answer["Y"][0, 0] == 2.0


def test_tensors_cross_the_pipe_whole_writable_and_with_their_response_parameters():
    readonly = np.frombuffer(np.arange(6, dtype=np.float16).tobytes(), np.float16).reshape(2, 3)
    tensors = Outputs({"F16": readonly, "T": np.arange(12, dtype=np.int64).reshape(3, 4).T,  # not contiguous
                       "B": np.array([[b"a", b"\x00bc"]], dtype=object), "OK": np.array([True, False]),
                       "EMPTY": np.zeros((0, 4), np.float32), "SCALAR": np.array(7, np.uint8),
                       "BF16": np.arange(4, dtype=ml_dtypes.bfloat16), "BIG_END": np.arange(3, dtype=">i4"),
                       "FORTRAN": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))}, {"seen": 3})
    back = unpacked(pickle.loads(pickle.dumps(packed(tensors), protocol=5)))
    assert set(back) == set(tensors) and back.parameters == {"seen": 3}
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)
        assert back[name].flags.writeable, name  # as a model in process gets its inputs
    assert not hasattr(unpacked(pickle.loads(pickle.dumps(packed({"X": readonly}), protocol=5))), "parameters")


CALLER = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            answer = pb_utils.InferenceRequest(model_name="big", requested_output_names=["Y"],
                                               inputs=[pb_utils.Tensor("X", x)]).exec()
            y = pb_utils.get_output_tensor_by_name(answer, "Y").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.full(x.shape, y.size, np.float32))]))
        return out
"""


class BigAnswers:
    """The replica's calls for a stub's BLS requests: every callee answers 4 MB."""

    async def run(self, call, each=None):
        return [{"Y": np.ones(1 << 20, np.float32)}]

    def submit(self, call, each=None):
        done = concurrent.futures.Future()
        done.set_result([{"Y": np.ones(1 << 20, np.float32)}])
        return done


def test_a_large_bls_answer_reaches_a_stub_while_its_batch_is_awaited_on_the_event_loop(tmp_path):
    write_model(tmp_path, "caller", CONFIG, {"1/model.py": CALLER}, config_name="config.yaml")
    store = LocalStore(tmp_path)
    caller = ModelRunner(store.config("caller"), store, isolated=True, calls=BigAnswers())
    caller.load()

    async def batches():
        return [(await asyncio.wait_for(caller.execute_async([caller.prepare(x(1.0))]), 60))[0] for _ in range(3)]

    try:
        answers = uvloop.run(batches())
    finally:
        caller.unload_all("test over")
    assert [answer["Y"][0, 0] for answer in answers] == [1 << 20] * 3  # the whole answer, three times over


SLOW_FINALIZE = """
import time

def infer(inputs):
    return {"Y": inputs["X"]}

def finalize():
    time.sleep(2)
"""


def test_a_stub_unloaded_from_the_event_loop_ends_on_a_thread_of_its_own(tmp_path):
    write_model(tmp_path, "slow", CONFIG, {"1/model.py": SLOW_FINALIZE}, config_name="config.yaml")
    (backend,) = isolated(tmp_path, "slow").backends.values()
    process = backend._process

    async def unload():
        backend.unload()  # as a retired version's last batch does, on the loop
        return process.is_alive()

    assert uvloop.run(unload())  # returned while the model's finalize still runs
    deadline = time.monotonic() + 30  # the unload's own thread reaps it
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.exitcode == 0


def test_batches_whose_size_counting_would_cost_or_that_carry_large_parameters_count_as_large():
    many = {"T": np.array([b""] * (COUNTED_ELEMENTS + 1), dtype=object)}
    assert _batch_bytes([many], None) > LOOP_BYTES
    few = {"T": np.array([b"ab"] * 10, dtype=object)}
    assert _batch_bytes([few], None) == 10 * 8 + 20
    assert _batch_bytes([few], [RequestInfo(parameters={"p": "x" * LOOP_BYTES})]) > LOOP_BYTES


def test_a_batch_given_up_midway_ends_its_stub_and_the_next_batch_gets_a_fresh_one(plain):
    async def batches():
        wedged = asyncio.ensure_future(plain.execute_async([plain.prepare(x(7.0))]))
        await asyncio.sleep(1.0)  # in the stub, sleeping
        wedged.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wedged
        (answer,) = await asyncio.wait_for(plain.execute_async([plain.prepare(x(1.0))]), 60)
        return answer

    (backend,) = plain.backends.values()
    first = backend._process
    answer = uvloop.run(batches())
    assert answer["Y"][0, 0] == 2.0 and backend._process is not first  # answered by a fresh stub
    first.join(30)
    assert first.exitcode is not None  # the one given up was ended
