"""Triton's sequence batcher without Ray: its config, the order of a sequence's requests, control tensors,
idle release, and the router's choice of replica."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster.app import AppArgs
from cluster.repository.model_apps import deployment_options
from deployments.config.model_config import ConfigError, parse_pbtxt
from deployments.errors import InferenceError
from deployments.scheduling.sequence_router import ROUTER_CLASS, rendezvous
from deployments.scheduling.sequences import Sequences, Step, model_parameters, sequence_step

CONTROLS = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]"""


def config(batching: str = f"sequence_batching {{ max_sequence_idle_microseconds: 2000000 {CONTROLS} }}",
           max_batch_size: int = 4):
    parsed = parse_pbtxt(f'name: "acc" backend: "python" max_batch_size: {max_batch_size} {batching} '
                         'input [ { name: "X" data_type: TYPE_INT64 dims: [ 1 ] } ] '
                         'output [ { name: "Y" data_type: TYPE_INT64 dims: [ 1 ] } ]', "acc/config.pbtxt")
    parsed.check("acc/config.pbtxt")
    return parsed


def test_control_tensors_follow_the_config():
    sequences = Sequences(config())
    tensors = sequences.controls(Step(7, start=True, end=False), rows=3)
    assert tensors["START"].dtype == np.int32 and tensors["START"].tolist() == [[1]] * 3
    assert tensors["END"].dtype == np.float32 and tensors["END"].tolist() == [[0.0]] * 3
    assert tensors["READY"].dtype == np.bool_ and tensors["READY"].all()
    assert tensors["CORRID"].dtype == np.uint64 and tensors["CORRID"].tolist() == [[7]] * 3
    unbatched = Sequences(config(max_batch_size=0)).controls(Step(7, start=False, end=True), rows=1)
    assert unbatched["START"].tolist() == [0] and unbatched["END"].tolist() == [1.0]
    with pytest.raises(InferenceError, match="takes integer correlation IDs"):
        sequences.controls(Step("text", start=True, end=False), rows=1)


def test_requests_of_one_sequence_run_in_arrival_order_others_interleave():
    async def scenario():
        sequences, log = Sequences(config()), []

        async def request(cid, n, start=False, end=False, work_s=0.0):
            async with sequences.turn(Step(cid, start, end)):
                log.append((cid, n, "in"))
                await asyncio.sleep(work_s)
                log.append((cid, n, "out"))

        await request(1, 0, start=True)
        await request(2, 0, start=True)
        await asyncio.gather(request(1, 1, work_s=0.05), request(1, 2), request(2, 1), request(1, 3, end=True))
        ones = [entry for entry in log if entry[0] == 1]
        assert ones == [(1, n, what) for n in range(4) for what in ("in", "out")]  # one at a time, in order
        assert log.index((2, 1, "in")) < log.index((1, 1, "out"))  # another sequence did not wait
        assert len(sequences) == 1  # sequence 1 ended

    asyncio.run(scenario())


def test_unknown_ended_and_idle_sequences_are_refused_with_the_reason():
    now = [0.0]
    sequences = Sequences(config(), clock=lambda: now[0])

    async def run(step):
        async with sequences.turn(step):
            pass

    with pytest.raises(InferenceError, match="must specify the START flag .* never started"):
        asyncio.run(run(Step(5, False, False)))
    asyncio.run(run(Step(5, True, False)))
    now[0] = 1.9
    asyncio.run(run(Step(5, False, False)))  # within 2 s of its last request
    now[0] = 4.0
    with pytest.raises(InferenceError, match="idle for more than 2 s"):
        asyncio.run(run(Step(5, False, False)))
    asyncio.run(run(Step(5, True, True)))  # a new START takes the id again; END releases it
    with pytest.raises(InferenceError, match="it ended"):
        asyncio.run(run(Step(5, False, False)))


@pytest.mark.parametrize("parameters, message", [
    (None, "non-zero or non-empty correlation ID"),
    ({"sequence_id": 0}, "non-zero or non-empty correlation ID"),
    ({"sequence_id": ""}, "non-zero or non-empty correlation ID"),
    ({"sequence_id": True}, "non-zero or non-empty correlation ID"),
])
def test_a_sequence_request_must_name_its_sequence(parameters, message):
    with pytest.raises(InferenceError, match=message):
        sequence_step("acc", parameters)
    assert sequence_step("acc", {"sequence_id": "a", "sequence_start": True}) == Step("a", True, False)
    assert model_parameters({"sequence_id": 3, "sequence_end": True, "custom": 1}) == {"custom": 1}


@pytest.mark.parametrize("batching, field", [
    (f"dynamic_batching {{ }} sequence_batching {{ {CONTROLS} }}", ""),  # the proto's oneof: one scheduler
    ('sequence_batching { state [ { input_name: "X" output_name: "T" data_type: TYPE_FP32 dims: [ 1 ] } ] }',
     "sequence_batching.state[0]"),
    ('sequence_batching { state [ { input_name: "S" output_name: "T" data_type: TYPE_FP32 dims: [ 1 ] '
     'initial_state [ { data_type: TYPE_FP32 dims: [ 1 ] data_file: "s.bin" name: "s" } ] } ] }',
     "sequence_batching.state[0].initial_state"),
    ("sequence_batching { iterative_sequence: true }", "sequence_batching.iterative_sequence"),
    ('sequence_batching { control_input [ { name: "X" control [ { kind: CONTROL_SEQUENCE_START '
     'int32_false_true: [ 0, 1 ] } ] } ] }', "sequence_batching.control_input[0].name"),
    ('sequence_batching { control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START } ] } ] }',
     "sequence_batching.control_input[0].control[0]"),
    ('sequence_batching { control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID '
     'data_type: TYPE_FP32 } ] } ] }', "sequence_batching.control_input[0].control[0].data_type"),
])
def test_sequence_configs_we_cannot_serve_are_refused_by_field(batching, field):
    with pytest.raises(ConfigError) as info:
        config(batching)
    assert info.value.field == field


def test_sequence_models_get_the_sequence_router_and_stay_out_of_the_ingress():
    sequence_model = config()
    options = deployment_options(sequence_model, AppArgs())
    assert options["request_router_config"].request_router_class == ROUTER_CLASS
    assert not AppArgs(colocate=True, colocate_python=True).colocates(sequence_model)


def test_rendezvous_is_stable_and_spreads_sequences():
    replicas = ["r-a", "r-b", "r-c", "r-d"]
    chosen = {cid: rendezvous(cid, replicas) for cid in range(400)}
    assert chosen == {cid: rendezvous(cid, list(reversed(replicas))) for cid in range(400)}  # order-free
    counts = [list(chosen.values()).count(r) for r in replicas]
    assert min(counts) > 60, counts  # ~100 each
    moved = sum(rendezvous(cid, replicas + ["r-e"]) != chosen[cid] for cid in range(400))
    assert moved < 150  # a fifth replica takes about a fifth, the rest stay


STATEFUL = """
name: "acc" platform: "onnxruntime_onnx" max_batch_size: 4
sequence_batching {
  control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
}
input [ { name: "INPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""


def test_implicit_state_follows_each_sequence_through_an_onnx_model(tmp_path):
    """The state the model wrote for a sequence is its next request's state input; START begins from
    zeros; the state output never reaches the answer; sequences keep their own."""
    from cluster.repository.examples import onnx_accumulator
    from cluster.repository.local_store import LocalStore
    from deployments.serving.runner import ModelRunner
    from tests.conftest import write_model

    write_model(tmp_path, "acc", STATEFUL, {"1/model.onnx": onnx_accumulator()})
    store = LocalStore(tmp_path)
    runner = ModelRunner(store.config("acc"), store)
    runner.load()
    assert runner.ready, runner.reason
    sequences = Sequences(runner.config)

    async def send(cid, value, start=False, outputs=None):
        step = Step(cid, start, False)
        async with sequences.turn(step) as sequence:
            pending = runner.prepare({"INPUT": np.full((1, 1), value, np.float32)}, outputs)
            pending.inputs = {**pending.inputs, **sequences.controls(step, pending.rows, sequence)}
            if pending.outputs is not None:
                pending.outputs = [*pending.outputs, *sequences.state_outputs]
            (result,) = runner.execute([pending])
            return sequences.keep_state(sequence, result)

    async def scenario():
        answers = [await send(1, 2.0, start=True), await send(2, 10.0, start=True), await send(1, 3.0),
                   await send(2, 1.0, outputs=["OUTPUT"]), await send(1, 5.0), await send(1, 7.0, start=True)]
        assert all(set(answer) == {"OUTPUT"} for answer in answers)
        return [float(answer["OUTPUT"][0, 0]) for answer in answers]

    assert asyncio.run(scenario()) == [2.0, 10.0, 5.0, 11.0, 10.0, 7.0]
