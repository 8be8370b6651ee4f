"""Model config: real config.pbtxt text and YAML into typed objects, round trips, and every error."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from cluster.app import AppArgs
from cluster.repository.model_apps import deployment_options
from deployments.config.model_config import ConfigError, ModelConfig, load_config, parse_pbtxt, parse_yaml
from deployments.config.messages import VersionPolicy

# Triton's own densenet_onnx example config, unchanged.
DENSENET = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""

FULL = """
name: "full"
backend: "onnxruntime"
max_batch_size: 16
input [ { name: "IN", data_type: TYPE_FP16, dims: [ -1, 4 ], optional: true } ]
output [ { name: "OUT", data_type: TYPE_STRING, dims: [ 1 ] } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 300
  default_queue_policy { max_queue_size: 12 }
}
instance_group [ { count: 3, kind: KIND_GPU } ]
version_policy: { specific: { versions: [1, 3] } }
parameters { key: "gpu_fraction" value { string_value: "0.25" } }
optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
"""

FULL_YAML = """
name: full
backend: onnxruntime
max_batch_size: 16
input: [{name: IN, data_type: TYPE_FP16, dims: [-1, 4], optional: true}]
output: [{name: OUT, data_type: TYPE_STRING, dims: [1]}]
dynamic_batching:
  preferred_batch_size: [4, 8]
  max_queue_delay_microseconds: 300
  default_queue_policy: {max_queue_size: 12}
instance_group: [{count: 3, kind: KIND_GPU, gpu_fraction: 0.25}]
version_policy: {specific: {versions: [1, 3]}}
optimization: {execution_accelerators: {gpu_execution_accelerator: [{name: tensorrt}]}}
"""


def test_triton_example_config_loads_with_every_field():
    config = parse_pbtxt(DENSENET, "densenet_onnx/config.pbtxt", "densenet_onnx")
    assert config.name == "densenet_onnx"
    assert config.backend_name == "onnxruntime"
    assert config.max_batch_size == 0 and not config.batching
    (tensor,) = config.input
    assert (tensor.name, tensor.datatype, tensor.dims, tensor.reshape.shape) == ("data_0", "FP32", [3, 224, 224], [1, 3, 224, 224])
    assert config.output[0].model_extra == {"label_filename": "densenet_labels.txt"}
    assert config.version_policy.latest.num_versions == 1
    assert config.replicas() == 1 and config.gpus_per_replica() == 0


def test_all_honoured_fields():
    config = parse_pbtxt(FULL, "full/config.pbtxt", "full")
    assert config.input[0].optional and config.input[0].dims == [-1, 4]
    assert config.output[0].datatype == "BYTES"
    assert config.dynamic_batching.preferred_batch_size == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 300
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 12
    assert config.replicas() == 3 and config.gpus_per_replica() == 0.25
    assert config.version_policy.select([1, 2, 3, 4]) == [1, 3]
    assert config.parameter("gpu_fraction") == "0.25"


@pytest.mark.parametrize("text", [DENSENET, FULL])
def test_pbtxt_round_trips_through_the_proto(text):
    original = text_format.Parse(text, model_config_pb2.ModelConfig())
    config = parse_pbtxt(text, "x/config.pbtxt")
    again = parse_pbtxt(text_format.MessageToString(config.to_proto()), "again")
    assert again == config
    # Fields we do not model survive the trip unchanged.
    assert config.to_proto().optimization == original.optimization
    assert config.to_proto().output[0].label_filename == original.output[0].label_filename
    assert config.to_proto().input[0].format == original.input[0].format


def test_yaml_loads_into_the_same_config_as_pbtxt():
    from_yaml = parse_yaml(FULL_YAML, "full/config.yaml", "full")
    from_pbtxt = parse_pbtxt(FULL, "full/config.pbtxt", "full")
    assert from_yaml.gpus_per_replica() == from_pbtxt.gpus_per_replica() == 0.25
    assert from_yaml.to_dict() == from_pbtxt.to_dict()


def test_name_defaults_to_the_folder(tmp_path):
    (tmp_path / "my_model").mkdir()
    (tmp_path / "my_model" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"')
    assert load_config(tmp_path / "my_model").name == "my_model"


@pytest.mark.parametrize(
    "text, field, problem",
    [
        ('max_batch: 4', "", 'no field named "max_batch"'),
        ('input [ { name: "x" data_type: TYPE_FLOAT32 dims: [1] } ]', "", "TYPE_FLOAT32"),
        ('max_batch_size: "four"', "", "max_batch_size"),
        ('input [ { name: "x" data_type: TYPE_FP32 dims: [-2] } ]', "input.0.dims", "-1 (any size) or >= 0"),
        ('name: "other"', "name", "does not match its folder 'm'"),
        ('parameters { key: "gpu_fraction" value { string_value: "half" } }', "parameters.gpu_fraction", "number"),
        ('instance_group [ { count: -1 } ]', "instance_group.0.count", "greater than or equal to 1"),
        ('parameters { key: "execution_timeout_s" value { string_value: "0" } }', "parameters.execution_timeout_s",
         "must be > 0"),
        ('parameters { key: "num_cpus" value { string_value: "many" } }', "parameters.num_cpus", "number"),
        ('parameters { key: "num_cpus" value { string_value: "-1" } }', "parameters.num_cpus", "must be >= 0"),
        ('default_model_filename: "/etc/passwd"', "default_model_filename", "inside the version folder"),
        ('default_model_filename: "../../secret.onnx"', "default_model_filename", "inside the version folder"),
        ('default_model_filename: "sub/../../x"', "default_model_filename", "inside the version folder"),
    ],
)
def test_config_errors_name_the_file_the_field_and_the_problem(text, field, problem):
    with pytest.raises(ConfigError) as info:
        parse_pbtxt(text, "m/config.pbtxt", "m")
    assert info.value.source == "m/config.pbtxt"
    assert info.value.field == field
    assert problem in str(info.value)
    assert str(info.value).startswith("m/config.pbtxt")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("max_batch_size: [", "invalid YAML"),
        ("- a list", "mapping"),
        ("max_batchsize: 4", 'no field named "max_batchsize"'),
    ],
)
def test_yaml_errors_name_the_file_and_the_problem(text, problem):
    with pytest.raises(ConfigError, match=problem) as info:
        parse_yaml(text, "m/config.yaml", "m")
    assert str(info.value).startswith("m/config.yaml")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"input": []}, "input"),
        ({"output": []}, "output"),
        ({"max_batch_size": 0}, "dynamic_batching"),
        ({"dynamic_batching": {"preferred_batch_size": [32]}}, "dynamic_batching.preferred_batch_size"),
        ({"input": [{"name": "a", "data_type": "TYPE_FP32"}, {"name": "a", "data_type": "TYPE_FP32"}]}, "input[1].name"),
        ({"input": [{"name": "a", "data_type": "TYPE_COMPLEX"}]}, "input[0].data_type"),
        ({"input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [4], "reshape": {"shape": [3]}}]}, "input[0].reshape"),
    ],
)
def test_complete_config_checks(changes, field):
    base = {
        "name": "m", "max_batch_size": 8, "dynamic_batching": {},
        "input": [{"name": "a", "data_type": "TYPE_FP32", "dims": [4]}],
        "output": [{"name": "b", "data_type": "TYPE_FP32", "dims": [4]}],
    }
    config = ModelConfig.model_validate({**base, **changes})
    with pytest.raises(ConfigError) as info:
        config.check("m/config.pbtxt")
    assert info.value.field == field


@pytest.mark.parametrize("text, field", [
    ('batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "N" data_type: TYPE_INT32 } ]', "batch_input"),
    ('batch_output [ { target_name: "Y" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "X" } ]', "batch_output"),
    ("model_transaction_policy { decoupled: true }", "model_transaction_policy.decoupled"),  # not Python
    ('model_repository_agents { agents [ { name: "checksum" } ] }', "model_repository_agents"),
])
def test_config_fields_we_cannot_serve_are_refused_by_name(text, field):
    config = parse_pbtxt(f'name: "m" platform: "onnxruntime_onnx" max_batch_size: 2 {text} '
                         'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ] '
                         'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]', "m/config.pbtxt")
    with pytest.raises(ConfigError) as info:
        config.check("m/config.pbtxt")
    assert info.value.field == field


def test_config_fields_served_without_are_named():
    config = parse_pbtxt('name: "m" max_batch_size: 2 response_cache { enable: true } '
                         'dynamic_batching { priority_levels: 2 priority_queue_policy { key: 1 value: { '
                         'max_queue_size: 5 } } } '
                         'model_transaction_policy { decoupled: false } metric_tags { key: "a" value: "b" }',
                         "m/config.pbtxt")
    assert config.caches_responses
    assert [field.split(":")[0] for field in config.ignored()] == [
        "metric_tags", "dynamic_batching.priority_queue_policy.max_queue_size"]
    streaming = parse_pbtxt('name: "m" backend: "python" response_cache { enable: true } '
                            'model_transaction_policy { decoupled: true }', "m/config.pbtxt")
    assert not streaming.caches_responses and [f.split(":")[0] for f in streaming.ignored()] == ["response_cache"]


@pytest.mark.parametrize(
    "policy, expected",
    [({}, [5]), ({"latest": {"num_versions": 2}}, [3, 5]), ({"all": {}}, [1, 3, 5]), ({"specific": {"versions": [3, 4]}}, [3])],
)
def test_version_policy_selects_versions(policy, expected):
    assert VersionPolicy.model_validate(policy).select([5, 1, 3]) == expected


def test_instance_groups_and_queue_policy_become_serve_options():
    config = parse_pbtxt(FULL, "full/config.pbtxt", "full")
    options = deployment_options(config, AppArgs())
    assert options["name"] == "full"
    assert options["num_replicas"] == 3
    assert options["ray_actor_options"]["num_gpus"] == 0.25
    assert options["max_queued_requests"] == 12
    cpu = parse_pbtxt('instance_group [ { count: 2 } ] parameters { key: "num_cpus" value { string_value: "1.5" } }', "c", "c")
    options = deployment_options(cpu, AppArgs())
    assert options["num_replicas"] == 2 and "num_gpus" not in options["ray_actor_options"]
    assert options["ray_actor_options"]["num_cpus"] == 1.5


def test_autoscaling_in_yaml_and_pbtxt_becomes_serve_autoscaling_config():
    yaml_config = parse_yaml("autoscaling: {min_replicas: 0, max_replicas: 5, target_ongoing_requests: 3}\n",
                             "a/config.yaml", "a")
    pbtxt_config = parse_pbtxt(
        'parameters { key: "autoscaling.min_replicas" value { string_value: "0" } }\n'
        'parameters { key: "autoscaling.max_replicas" value { string_value: "5" } }\n'
        'parameters { key: "autoscaling.target_ongoing_requests" value { string_value: "3" } }\n', "a/config.pbtxt", "a")
    assert yaml_config.autoscaling == pbtxt_config.autoscaling
    assert pbtxt_config.parameters == {}  # taken out of the parameters into the typed field
    options = deployment_options(pbtxt_config, AppArgs())
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 5, "target_ongoing_requests": 3.0,
                                             "upscale_delay_s": 30.0, "downscale_delay_s": 600.0,
                                             "look_back_period_s": 30.0}
    assert pbtxt_config.replicas() == 0
    from ray.serve.config import AutoscalingConfig  # Serve's own schema accepts it as is
    AutoscalingConfig(**options["autoscaling_config"])
    # Triton's JSON form carries it as parameters, and reads back to the same config
    again = parse_yaml(json.dumps(pbtxt_config.to_dict()), "a/config.yaml", "a")
    assert again.autoscaling == pbtxt_config.autoscaling


@pytest.mark.parametrize("text, field", [
    ("autoscaling: {min_replica: 1}", "autoscaling.min_replica"),
    ("autoscaling: {min_replicas: 4, max_replicas: 2}", "autoscaling"),
    ("autoscaling: [1]", "autoscaling"),
    ('parameters: {"autoscaling.max": {string_value: "3"}}', "autoscaling.max"),
    ('parameters: {"autoscaling.max_replicas": {string_value: "many"}}', "autoscaling.max_replicas"),
])
def test_autoscaling_errors_name_the_field(text, field):
    with pytest.raises(ConfigError) as error:
        parse_yaml(text, "b/config.yaml", "b")
    assert error.value.field == field


@pytest.mark.parametrize("name", ["m\n", "m/..", "..", "-m", "m m"])
def test_model_names_are_matched_in_full(name):
    with pytest.raises(ConfigError, match="not a valid model name"):
        parse_pbtxt(f"name: {json.dumps(name)}", "m/config.pbtxt")


def test_a_model_file_in_a_subfolder_of_the_version_is_allowed():
    assert parse_pbtxt('default_model_filename: "model.savedmodel/saved_model.pb"', "m/config.pbtxt", "m") \
        .default_model_filename == "model.savedmodel/saved_model.pb"


LEVELS = ("priority_levels: 3 default_priority_level: 2 priority_queue_policy { key: 1 value: { "
          "default_timeout_microseconds: 700 } } ")


@pytest.mark.parametrize("policy, parameters, level, expected", [
    ("", None, 0, None),
    ("default_queue_policy { default_timeout_microseconds: 2000 }", None, 0, ("REJECT", 2000)),
    ("default_queue_policy { default_timeout_microseconds: 2000 }", {"timeout": 50}, 0, ("REJECT", 2000)),
    ("default_queue_policy { default_timeout_microseconds: 2000 allow_timeout_override: true }", {"timeout": 50}, 0,
     ("REJECT", 50)),
    ("default_queue_policy { default_timeout_microseconds: 2000 timeout_action: DELAY }", None, 0, ("DELAY", 2000)),
    (LEVELS + "default_queue_policy { default_timeout_microseconds: 2000 }", None, 1, ("REJECT", 700)),
    (LEVELS + "default_queue_policy { default_timeout_microseconds: 2000 }", None, 3, ("REJECT", 2000)),
])
def test_the_queue_policy_of_each_level_sets_its_timeout(policy, parameters, level, expected):
    from deployments.scheduling.limits import queue_timeout_ns

    config = parse_pbtxt(f"max_batch_size: 4 dynamic_batching {{ {policy} }}", "m/config.pbtxt", "m")
    timeout = queue_timeout_ns(config, 1_000_000, parameters, level)
    assert timeout == (None if expected is None else (expected[0], 1_000_000 + expected[1] * 1000))


def test_priority_levels_place_requests():
    config = parse_pbtxt(f"max_batch_size: 4 dynamic_batching {{ {LEVELS} }}", "m/config.pbtxt", "m")
    batching = config.dynamic_batching
    assert [batching.priority(p) for p in (None, 0, 1, 3)] == [2, 2, 1, 3]
    for bad in (4, -1, "1", True):
        with pytest.raises(ValueError, match="not a level in 1..3"):
            batching.priority(bad)
    assert parse_pbtxt("max_batch_size: 4 dynamic_batching { }", "m/config.pbtxt", "m").dynamic_batching.priority(7) == 0
    with pytest.raises(ConfigError, match="within 1..3"):
        parse_pbtxt('name: "m" max_batch_size: 4 dynamic_batching { priority_levels: 3 default_priority_level: 4 } '
                    'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ] '
                    'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]', "m/config.pbtxt").check("m")
