"""Ensemble configs and graph checks: every failure named, no Ray."""

from __future__ import annotations

import pytest

from deployments.config.model_config import ConfigError, ModelConfig, parse_pbtxt, parse_yaml
from ensembles.graph import check_graph, check_tensors, is_ensemble

BASE = {
    "name": "e", "platform": "ensemble", "max_batch_size": 8,
    "input": [{"name": "A", "data_type": "TYPE_INT32", "dims": [16]}, {"name": "B", "data_type": "TYPE_INT32", "dims": [16]}],
    "output": [{"name": "OUT", "data_type": "TYPE_INT32", "dims": [16]}],
}
SIMPLE = ModelConfig.model_validate({
    "name": "simple", "max_batch_size": 8,
    "input": [{"name": f"INPUT{i}", "data_type": "TYPE_INT32", "dims": [16]} for i in (0, 1)],
    "output": [{"name": f"OUTPUT{i}", "data_type": "TYPE_INT32", "dims": [16]} for i in (0, 1)],
})


def step(inputs, outputs, model="simple"):
    return {"model_name": model, "model_version": -1, "input_map": inputs, "output_map": outputs}


def ensemble(*steps, **changes) -> ModelConfig:
    return ModelConfig.model_validate({**BASE, "ensemble_scheduling": {"step": list(steps)}, **changes})


DIAMOND = [
    step({"INPUT0": "x", "INPUT1": "y"}, {"OUTPUT0": "OUT"}),  # listed first, runs last
    step({"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "x"}),
    step({"INPUT0": "B", "INPUT1": "A"}, {"OUTPUT1": "y"}),
]


def test_triton_ensemble_pbtxt_and_yaml_load_the_same():
    text = """
platform: "ensemble"
max_batch_size: 8
input [ { name: "A", data_type: TYPE_INT32, dims: [ 16 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 16 ] } ]
ensemble_scheduling { step [ { model_name: "simple" model_version: -1
  input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "A" }
  output_map { key: "OUTPUT0" value: "OUT" } } ] }
"""
    yaml_text = """
platform: ensemble
max_batch_size: 8
input: [{name: A, data_type: TYPE_INT32, dims: [16]}]
output: [{name: OUT, data_type: TYPE_INT32, dims: [16]}]
ensemble_scheduling:
  step:
    - {model_name: simple, model_version: -1, input_map: {INPUT0: A, INPUT1: A}, output_map: {OUTPUT0: OUT}}
"""
    from_pbtxt, from_yaml = parse_pbtxt(text, "e/config.pbtxt", "e"), parse_yaml(yaml_text, "e/config.yaml", "e")
    assert is_ensemble(from_pbtxt) and from_pbtxt.to_dict() == from_yaml.to_dict()
    (only,) = check_graph(from_pbtxt, "e", {"simple"})
    assert only.input_map == {"INPUT0": "A", "INPUT1": "A"} and only.model_version == -1


def test_steps_are_ordered_after_their_producers():
    ordered = check_graph(ensemble(*DIAMOND), "e", {"simple"})
    assert [s.output_map for s in ordered] == [{"OUTPUT0": "x"}, {"OUTPUT1": "y"}, {"OUTPUT0": "OUT"}]
    check_tensors(ensemble(*DIAMOND), ordered, {"simple": SIMPLE}, "e")


@pytest.mark.parametrize(
    "steps, known, message",
    [
        ([step({"INPUT0": "A"}, {"OUTPUT0": "OUT"}, model="nope")], {"simple"}, "model 'nope' is not in the repository"),
        ([step({"INPUT0": "A"}, {"OUTPUT0": "OUT"}), step({"INPUT0": "B"}, {"OUTPUT1": "OUT"})], {"simple"},
         "tensor 'OUT' is produced twice"),
        ([step({"INPUT0": "A"}, {"OUTPUT0": "A"})], {"simple"}, "tensor 'A' is produced twice"),
        ([step({"INPUT0": "ghost"}, {"OUTPUT0": "OUT"})], {"simple"}, "tensor 'ghost' is not produced"),
        ([step({"INPUT0": "A"}, {"OUTPUT0": "other"})], {"simple"}, "ensemble output 'OUT' is not produced"),
        ([step({"INPUT0": "y"}, {"OUTPUT0": "x"}), step({"INPUT0": "x"}, {"OUTPUT0": "y", "OUTPUT1": "OUT"})],
         {"simple"}, "form a cycle"),
        ([step({"INPUT0": "A"}, {"OUTPUT0": "OUT"}, model="e")], {"simple", "e"}, "cannot be its own step"),
        ([step({}, {"OUTPUT0": "OUT"})], {"simple"}, "needs input_map and output_map"),
        ([], {"simple"}, "at least one step"),
    ],
)
def test_graph_errors_are_named(steps, known, message):
    with pytest.raises(ConfigError, match=message):
        check_graph(ensemble(*steps), "e/config.pbtxt", known)


def test_missing_scheduling_is_an_error():
    with pytest.raises(ConfigError, match="needs ensemble_scheduling"):
        check_graph(ModelConfig.model_validate(BASE), "e", {"simple"})


@pytest.mark.parametrize(
    "steps, changes, message",
    [
        ([step({"INPUT7": "A", "INPUT1": "B"}, {"OUTPUT0": "OUT"})], {}, "has no input 'INPUT7'"),
        ([step({"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT9": "OUT"})], {}, "has no output 'OUTPUT9'"),
        ([step({"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "OUT"})],
         {"input": [{"name": "A", "data_type": "TYPE_FP32", "dims": [16]}, {"name": "B", "data_type": "TYPE_INT32", "dims": [16]}]},
         "tensor 'A' from the ensemble input is FP32"),
        ([step({"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "OUT"})],
         {"input": [{"name": "A", "data_type": "TYPE_INT32", "dims": [4]}, {"name": "B", "data_type": "TYPE_INT32", "dims": [16]}]},
         r"takes INT32 \[-1, 16\]"),
        ([step({"INPUT0": "A", "INPUT1": "B"}, {"OUTPUT0": "OUT"})],
         {"output": [{"name": "OUT", "data_type": "TYPE_FP64", "dims": [16]}]}, "ensemble output 'OUT' is FP64"),
    ],
)
def test_tensor_errors_are_named(steps, changes, message):
    config = ensemble(*steps, **changes)
    ordered = check_graph(config, "e", {"simple"})
    with pytest.raises(ConfigError, match=message):
        check_tensors(config, ordered, {"simple": SIMPLE}, "e")
