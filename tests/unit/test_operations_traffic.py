"""A traffic split between a model's versions in one process (no Ray): requests without a version follow the
weights, explicit versions and sticky keys are kept, and a new split changes nothing else (no reload)."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.repository.examples import onnx_mlp
from deployments.config.model_config import ConfigError, parse_pbtxt, parse_yaml
from deployments.config.operations import Traffic
from tests.conftest import write_model
from tests.unit.conftest import runner

CONFIG = 'platform: "onnxruntime_onnx" version_policy { all {} } '
SPLIT = 'parameters { key: "traffic.weights" value { string_value: "1:75,2:25" } }'
X = {"INPUT0": np.ones((1, 64), np.float32)}


def two_versions(tmp_path, config: str = CONFIG + SPLIT):
    write_model(tmp_path, "canary", config, {"1/model.onnx": onnx_mlp(seed=1), "2/model.onnx": onnx_mlp(seed=2)})
    return runner(tmp_path, "canary")


def test_requests_without_a_version_follow_the_weights_and_named_versions_are_kept(tmp_path):
    model = two_versions(tmp_path)
    chosen = [model.prepare(X).version for _ in range(2000)]
    share = chosen.count(2) / len(chosen)
    assert 0.20 < share < 0.30, share  # 25 % within ~5 standard deviations (sd ~1 % at n=2000)
    assert {model.prepare(X, version=1).version for _ in range(50)} == {1}
    assert {model.prepare(X, version="2").version for _ in range(50)} == {2}


def test_a_sticky_parameter_keeps_each_caller_on_one_version_and_spreads_callers(tmp_path):
    model = two_versions(tmp_path, CONFIG + SPLIT + ' parameters { key: "traffic.sticky_by" value { string_value: '
                                                     '"user" } }')
    users = [f"user-{i}" for i in range(400)]
    first = {user: model.prepare(X, parameters={"user": user}).version for user in users}
    again = {user: model.prepare(X, parameters={"user": user}).version for user in users}
    assert first == again
    assert 0.15 < list(first.values()).count(2) / len(users) < 0.35
    # The same key picks the same version in any process: the draw depends on the key alone.
    assert Traffic(weights={1: 75, 2: 25}).choose([1, 2], "user-7") == first["user-7"]
    # A sequence's requests stay on one version even without a sticky parameter.
    assert Traffic(weights={1: 1, 2: 1}).choose([1, 2], "sequence 5") == Traffic(weights={1: 1, 2: 1}).choose(
        [1, 2], "sequence 5")


def test_a_new_split_changes_no_backend_and_versions_without_weight_or_load_get_none(tmp_path):
    model = two_versions(tmp_path)
    backends = dict(model.backends)
    promoted = parse_pbtxt(CONFIG + 'parameters { key: "traffic.weights" value { string_value: "2:1" } }', "new",
                           "canary")
    model.update([1, 2], config=promoted)
    assert model.backends == backends and not model._retired  # nothing loaded again
    assert {model.prepare(X).version for _ in range(100)} == {2}
    assert model.config.traffic.weights == {2: 1.0}  # the config the model answers with shows it too
    only_missing = parse_pbtxt(CONFIG + 'parameters { key: "traffic.weights" value { string_value: "3:1" } }', "new",
                               "canary")
    model.update([1, 2], config=only_missing)
    assert {model.prepare(X).version for _ in range(50)} == {2}  # no weighted version loaded: the newest


@pytest.mark.parametrize("block, problem", [
    ("traffic: {weights: {1: -1}}", "traffic.weights: Value error, weights must be >= 0"),
    ("traffic: {weights: {1: 0}}", "at least one weight must be > 0"),
    ("traffic: {weights: {0: 1}}", "versions are numbers from 1"),
    ("traffic: {weight: {1: 1}}", "traffic.weight: unknown field"),
    ("traffic: {weights: '1-3'}", "is not a list of key:value pairs"),
    ("shadow: {tolerance: 0.1}", "a shadow needs a model, or a version of this model"),
    ("payload_log: {sample_rate: 1.5}", "payload_log.sample_rate"),
    ("drift: {window_s: 30}", "drift needs a reference file or reference_requests"),
    ("drift: {reference: ../x.json}", "must name a file in the model's folder"),
    ("shadow: {version: 2}\nsequence_batching: {}", "shadow: is not served for sequence models"),
    ("payload_log: {sample_rate: 1}\nmodel_transaction_policy: {decoupled: true}", "payload_log: is not served for "
     "decoupled models"),
    ("platform: ensemble\ntraffic: {weights: {1: 1}}", "traffic: is not served for ensembles"),
])
def test_operations_blocks_are_checked_and_refused_by_name(block, problem):
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        config = parse_yaml(f"name: m\n{block}\n", "m/config.yaml", "m")
        config.check("m/config")


def test_operations_blocks_round_trip_between_yaml_and_pbtxt_parameters():
    config = parse_yaml("name: m\nbackend: python\ntraffic: {weights: {1: 90, 2: 10}, sticky_by: user}\n"
                        "shadow: {model: other, tolerances: {OUT: 0.5}}\npayload_log: {sample_rate: 0.5, redact: "
                        "[A, B]}\n", "m/config.yaml", "m")
    parameters = config.to_dict()["parameters"]
    assert parameters["traffic.weights"] == {"string_value": "1:90,2:10"}
    assert parameters["payload_log.redact"] == {"string_value": "A,B"}
    text = "name: 'm' backend: 'python' " + " ".join(
        f'parameters {{ key: "{key}" value {{ string_value: "{value["string_value"]}" }} }}'
        for key, value in parameters.items())
    assert parse_pbtxt(text, "m/config.pbtxt", "m") == config


def test_headers_matching_the_forward_pattern_become_parameters_as_triton_forwards_them():
    from cluster.protocol.forwarded_headers import compile_pattern, forward
    from deployments.errors import InferenceError

    parameters = {"user": "own"}
    forward(parameters, {"x-user": "u1", "X-Tenant": "t", "accept": "*/*", "user": "header"},
            compile_pattern("X-(user|tenant)|^user$"))
    assert parameters == {"user": "own", "x-user": "u1", "X-Tenant": "t"}  # (the request's own kept)
    sensitive = {}
    forward(sensitive, {"x-user": "u1", "X-USER": "u2"}, compile_pattern("(?-i)X-USER"))
    assert sensitive == {"X-USER": "u2"}
    forward(unchanged := {}, {"x-user": "u1"}, compile_pattern(""))
    assert unchanged == {}
    with pytest.raises(InferenceError, match="Header 'timeout' is reserved for Triton usage and cannot be forwarded"):
        forward({}, {"timeout": "5"}, compile_pattern(".*"))
