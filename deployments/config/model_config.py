"""Typed model configuration that mirrors Triton's ``model_config.proto``.

``config.pbtxt`` and ``config.yaml`` load into the same objects. Both are first checked by protobuf
against the ``ModelConfig`` message that ``tritonclient`` ships, so a misspelt field is named exactly as
Triton would name it; fields we do not model (``optimization``, ``model_warmup``, ...) are kept as extras
and written back unchanged, so a config round-trips.

Ray-specific additions live where Triton leaves room for them: ``parameters`` (``gpu_fraction``,
``num_cpus``, ``execution_timeout_s``, ``<block>.<field>``) and, in YAML, ``instance_group[].gpu_fraction`` and the
blocks ``autoscaling``, ``traffic``, ``shadow``, ``payload_log`` and ``drift`` (``deployments.config.operations``).
The nested messages (tensors, batching, instance groups, version policy, autoscaling) live in
``deployments.config.messages``.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from google.protobuf import json_format, text_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tritonclient.grpc import model_config_pb2

from deployments.config.operations import BLOCKS, Drift, PayloadLog, Shadow, Traffic
from deployments.config.messages import (
    Autoscaling, DynamicBatching, InputConfig, InstanceGroup, ModelParameter, SequenceBatching, TensorConfig,
    VersionPolicy,
)

#: A model name, matched in full (``fullmatch``: ``$`` would let a trailing newline through).
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")


def is_relative_inside(path: str) -> bool:
    """Whether a path names a file inside its folder: relative, no ``.``/``..`` parts, no backslashes or NULs."""
    parts = PurePosixPath(path).parts
    return bool(parts) and not path.startswith("/") and "\\" not in path and "\0" not in path \
        and not any(part in (".", "..") for part in parts)


#: Backends by Triton ``platform`` name; a config may name either.
PLATFORM_BACKENDS = {
    "onnxruntime_onnx": "onnxruntime",
    "pytorch_libtorch": "pytorch",
    "tensorrt_plan": "tensorrt",
}


class ConfigError(ValueError):
    """A config problem, naming the file, the field and the problem."""

    def __init__(self, source: str, field: str, problem: str):
        super().__init__(source, field, problem)
        self.source, self.field, self.problem = source, field, problem

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        return f"{where}: {self.problem}"


AUTOSCALING_PREFIX = "autoscaling."
#: ric's blocks of fields: YAML mappings, or ``<block>.<field>`` parameters.
RIC_BLOCKS: dict[str, type[BaseModel]] = {"autoscaling": Autoscaling, **BLOCKS}
#: ric's number parameters: (key, bound, whether the bound itself is excluded).
NUMBER_PARAMETERS = (("gpu_fraction", 0.0, True), ("num_cpus", 0.0, False), ("execution_timeout_s", 0.0, True))


#: Fields the server cannot serve as Triton would: a config that sets them is refused, naming the field.
REFUSED = {
    "batch_input": "is not supported by this server (the backend would miss the inputs it describes)",
    "batch_output": "is not supported by this server (the client would miss the outputs it describes)",
    "model_repository_agents": "is not supported by this server (no repository agents run)",
}
#: Fields the server serves without: the model runs, and each is named in a warning at load.
IGNORED = {
    "model_metrics": "no Prometheus metrics yet",
    "metric_tags": "no Prometheus metrics yet",
    "model_operations": "not applied",
}


class ModelConfig(BaseModel):
    """A model's configuration, field for field as Triton's ``ModelConfig`` message.

    Fields we do not model are kept (``model_extra``) and written back by :meth:`to_dict`.
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(default="", description="Model name; defaults to the folder name.")
    platform: str = Field(default="", description="Triton platform, e.g. onnxruntime_onnx.")
    backend: str = Field(default="", description="Backend name: onnxruntime, pytorch, python, tensorrt.")
    max_batch_size: int = Field(default=0, ge=0, description="Rows per batch; 0 means no batch dim.")
    input: list[InputConfig] = Field(default_factory=list)
    output: list[TensorConfig] = Field(default_factory=list)
    dynamic_batching: DynamicBatching | None = None
    sequence_batching: SequenceBatching | None = None
    instance_group: list[InstanceGroup] = Field(default_factory=list)
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    default_model_filename: str = Field(default="", description="The model file in each version folder.")
    parameters: dict[str, ModelParameter] = Field(default_factory=dict)
    autoscaling: Autoscaling | None = Field(default=None, description="Replica autoscaling (ric extension).")
    traffic: Traffic | None = Field(default=None, description="A traffic split between versions (ric extension).")
    shadow: Shadow | None = Field(default=None, description="A shadow of the model's requests (ric extension).")
    payload_log: PayloadLog | None = Field(default=None, description="Payload logging (ric extension).")
    drift: Drift | None = Field(default=None, description="Drift monitoring (ric extension).")

    @field_validator("default_model_filename")
    @classmethod
    def _inside_the_version_folder(cls, value: str) -> str:
        if value and not is_relative_inside(value):
            raise ValueError(f"{value!r} must name a file inside the version folder (a relative path without '..')")
        return value

    def parameter(self, key: str, default: str | None = None) -> str | None:
        """A string parameter's value, or ``default``."""
        param = self.parameters.get(key)
        return param.string_value if param is not None else default

    @property
    def backend_name(self) -> str:
        """The backend that runs this model: ``backend`` if set, else the one its ``platform`` names."""
        return self.backend or PLATFORM_BACKENDS.get(self.platform, "")

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    @property
    def caches_responses(self) -> bool:
        """``response_cache { enable: true }`` on a model whose answer follows from its request alone (not
        a sequence's, not a decoupled model's stream)."""
        enabled = bool(((self.model_extra or {}).get("response_cache") or {}).get("enable"))
        return enabled and not self.decoupled and self.sequence_batching is None

    @property
    def decoupled(self) -> bool:
        """A model that answers a request with zero, one or many responses (Triton's transaction policy)."""
        return bool(((self.model_extra or {}).get("model_transaction_policy") or {}).get("decoupled"))

    def replicas(self) -> int:
        """Serve replicas to start with: the instance counts added up (one instance when no group is given),
        or the autoscaling minimum."""
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return sum(group.count for group in self.instance_group) or 1

    @property
    def scales_to_zero(self) -> bool:
        """Autoscaled down to zero replicas when idle: a call starts one (so fan-outs must not call it)."""
        return self.autoscaling is not None and self.autoscaling.min_replicas == 0

    def gpus_per_replica(self) -> float:
        """GPUs each replica asks Ray for: 0 unless an instance group is KIND_GPU."""
        gpu_groups = [g for g in self.instance_group if g.kind == "KIND_GPU"]
        if not gpu_groups:
            return 0.0
        return gpu_groups[0].gpu_fraction or float(self.parameter("gpu_fraction") or 1.0)

    def ignored(self) -> list[str]:
        """The fields this config sets that the server does not act on (served without them; said at load)."""
        extra = self.model_extra or {}
        found = [f"{name}: {why}" for name, why in IGNORED.items() if extra.get(name)]
        if (extra.get("response_cache") or {}).get("enable") and not self.caches_responses:
            found.append("response_cache: a sequence's or a decoupled model's answers are not cached")
        if self.dynamic_batching is not None and any(
                policy.max_queue_size for policy in self.dynamic_batching.priority_queue_policy.values()):
            found.append("dynamic_batching.priority_queue_policy.max_queue_size: one queue limit for all levels "
                         "(default_queue_policy.max_queue_size, or the application's)")
        return found

    def to_dict(self) -> dict[str, Any]:
        """Triton's JSON form of the config (``GET /v2/models/<m>/config``)."""
        data = self.model_dump(mode="json", exclude_none=True)
        for group in data["instance_group"]:
            group.pop("gpu_fraction", None)
        for key, value in (data.pop("autoscaling", None) or {}).items():
            data["parameters"][AUTOSCALING_PREFIX + key] = {"string_value": f"{value:g}"}
        for block in BLOCKS:
            if data.pop(block, None) is not None:
                data["parameters"].update(getattr(self, block).parameters(block))
        if self.gpus_per_replica() and "gpu_fraction" not in self.parameters:
            data["parameters"]["gpu_fraction"] = {"string_value": str(self.gpus_per_replica())}
        return data

    def served_dict(self) -> dict[str, Any]:
        """The config as a served model answers it (``/config``, a Python model's ``args``): Triton's JSON
        form with the instance groups Triton completes: one named after the model when none is configured,
        names ``<model>_<i>``, KIND_AUTO resolved (KIND_GPU where the model takes GPUs), the empty fields."""
        data = self.to_dict()
        kind = "KIND_GPU" if self.gpus_per_replica() else "KIND_CPU"
        groups = data["instance_group"] or [{"name": self.name, "count": 1}]
        for i, group in enumerate(groups):
            group.pop("gpu_fraction", None)
            group["name"] = group.get("name") or f"{self.name}_{i}"
            if group.get("kind", "KIND_AUTO") == "KIND_AUTO":
                group["kind"] = kind
            for key, empty in (("gpus", []), ("secondary_devices", []), ("profile", []), ("passive", False),
                               ("host_policy", "")):
                group.setdefault(key, empty)
        data["instance_group"] = groups
        return data

    def to_proto(self) -> model_config_pb2.ModelConfig:
        return json_format.ParseDict(self.to_dict(), model_config_pb2.ModelConfig())

    def check(self, source: str) -> None:
        """Cross-field checks on a complete config (after auto-complete); raises ConfigError."""
        if not self.input:
            raise ConfigError(source, "input", "no inputs are configured and none could be read from the model")
        if not self.output:
            raise ConfigError(source, "output", "no outputs are configured and none could be read from the model")
        for kind, tensors in (("input", self.input), ("output", self.output)):
            seen: set[str] = set()
            for i, tensor in enumerate(tensors):
                if tensor.name in seen:
                    raise ConfigError(source, f"{kind}[{i}].name", f"duplicate name {tensor.name!r}")
                seen.add(tensor.name)
                try:
                    tensor.datatype
                except ValueError as exc:
                    raise ConfigError(source, f"{kind}[{i}].data_type", str(exc)) from None
                if tensor.reshape is not None and -1 not in tensor.dims and -1 not in tensor.reshape.shape:
                    if _count(tensor.dims) != _count(tensor.reshape.shape):
                        raise ConfigError(source, f"{kind}[{i}].reshape", "reshape must keep the element count")
        if self.sequence_batching is not None:
            self._check_sequence_batching(source)
        extra = self.model_extra or {}
        for field, why in REFUSED.items():
            if extra.get(field):
                raise ConfigError(source, field, why)
        if self.decoupled and (self.backend_name != "python" or self.sequence_batching is not None):
            raise ConfigError(source, "model_transaction_policy.decoupled",
                              "decoupled models must be Python-backend models without sequence_batching here")
        if self.dynamic_batching is not None:
            if not self.batching:
                raise ConfigError(source, "dynamic_batching", "needs max_batch_size > 0")
            levels = self.dynamic_batching.priority_levels
            if self.dynamic_batching.default_priority_level > levels or any(
                    not 0 < level <= levels for level in self.dynamic_batching.priority_queue_policy):
                raise ConfigError(source, "dynamic_batching.priority_levels",
                                  f"default_priority_level and priority_queue_policy levels must be within 1..{levels}")
            for size in self.dynamic_batching.preferred_batch_size:
                if not 0 < size <= self.max_batch_size:
                    raise ConfigError(
                        source, "dynamic_batching.preferred_batch_size",
                        f"{size} is not within 1..max_batch_size ({self.max_batch_size})",
                    )


    def _check_sequence_batching(self, source: str) -> None:
        sequence = self.sequence_batching  # (the proto refuses it beside dynamic_batching: one scheduler)
        if sequence.model_extra.get("iterative_sequence"):  # parsed by protobuf, not served: refused by name
            raise ConfigError(source, "sequence_batching.iterative_sequence", "is not supported by this server yet")
        inputs = {tensor.name for tensor in self.input}
        outputs = {tensor.name for tensor in self.output}
        for i, state in enumerate(sequence.state):
            where = f"sequence_batching.state[{i}]"
            if state.input_name in inputs or state.output_name in outputs:
                raise ConfigError(source, where, "its input_name and output_name must not be model inputs or outputs")
            try:
                state.datatype
            except ValueError as exc:
                raise ConfigError(source, f"{where}.data_type", str(exc)) from None
            if any("data_file" in initial for initial in state.initial_state):
                raise ConfigError(source, f"{where}.initial_state", "data_file is not supported; use zero_data")
        for i, control in enumerate(sequence.control_input):
            where = f"sequence_batching.control_input[{i}]"
            if control.name in inputs:
                raise ConfigError(source, f"{where}.name", f"{control.name!r} is also a model input")
            if len(control.control) != 1:
                raise ConfigError(source, f"{where}.control", "needs exactly one control")
            (one,) = control.control
            if one.kind == "CONTROL_SEQUENCE_CORRID":
                if one.data_type not in ("TYPE_UINT64", "TYPE_INT64", "TYPE_UINT32", "TYPE_INT32", "TYPE_STRING"):
                    raise ConfigError(source, f"{where}.control[0].data_type",
                                      "CORRID needs TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 or TYPE_STRING")
            elif sum(bool(values) for values in (one.int32_false_true, one.fp32_false_true, one.bool_false_true)) != 1 \
                    or len(one.int32_false_true or one.fp32_false_true or one.bool_false_true) != 2:
                raise ConfigError(source, f"{where}.control[0]", "needs one of int32_false_true, fp32_false_true "
                                  "or bool_false_true with two values (false, true)")


def _ric_block(parameters: dict[str, Any], yaml_form: Any, source: str, block: str, known: type[BaseModel]
               ) -> dict[str, Any] | None:
    """A ric block's fields (``autoscaling``, ``traffic``, ...) from YAML's mapping or the ``<block>.<field>``
    parameters (which are taken out of ``parameters``); an unknown field is refused by name."""
    prefix = f"{block}."
    from_parameters = {key.removeprefix(prefix): parameters.pop(key).get("string_value", "")
                       for key in [k for k in parameters if k.startswith(prefix)]}
    if yaml_form is not None and not isinstance(yaml_form, dict):
        raise ConfigError(source, block, "must be a mapping of fields")
    fields = {**from_parameters, **(yaml_form or {})}
    unknown = sorted(set(fields) - set(known.model_fields))
    if unknown:
        raise ConfigError(source, f"{block}.{unknown[0]}", f"unknown field; known: {sorted(known.model_fields)}")
    return fields if yaml_form is not None or from_parameters else None


def _count(dims: list[int]) -> int:
    total = 1
    for d in dims:
        total *= d
    return total


def parse_pbtxt(text: str, source: str, folder_name: str | None = None) -> ModelConfig:
    """Parse ``config.pbtxt`` text with protobuf's text format into a ModelConfig."""
    try:
        message = text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(source, "", str(exc)) from None
    return _from_proto(message, {}, source, folder_name)


def parse_yaml(text: str, source: str, folder_name: str | None = None) -> ModelConfig:
    """Parse ``config.yaml`` (the same fields as ``config.pbtxt``) into a ModelConfig."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(source, "", "the config must be a mapping of fields")
    # gpu_fraction and the ric blocks (autoscaling, traffic, ...) are ours, not Triton's: out before protobuf.
    fractions = {}
    for i, group in enumerate(data.get("instance_group") or []):
        if isinstance(group, dict) and "gpu_fraction" in group:
            fractions[i] = group.pop("gpu_fraction")
    blocks = {block: data.pop(block) for block in RIC_BLOCKS if block in data}
    try:
        message = json_format.ParseDict(data, model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        raise ConfigError(source, "", str(exc)) from None
    return _from_proto(message, fractions, source, folder_name, blocks)


def load_config(folder: Path) -> ModelConfig:
    """Load ``<folder>/config.pbtxt`` or ``<folder>/config.yaml``; the name defaults to the folder."""
    for filename, parse in (("config.pbtxt", parse_pbtxt), ("config.yaml", parse_yaml), ("config.yml", parse_yaml)):
        path = folder / filename
        if path.is_file():
            return parse(path.read_text(), str(path), folder.name)
    raise ConfigError(str(folder), "", "no config.pbtxt or config.yaml")


def _from_proto(
    message: model_config_pb2.ModelConfig, fractions: dict[int, Any], source: str, folder_name: str | None,
    blocks: dict[str, Any] | None = None,
) -> ModelConfig:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    for i, fraction in fractions.items():
        data["instance_group"][i]["gpu_fraction"] = fraction
    for block, known in RIC_BLOCKS.items():
        data[block] = _ric_block(data.get("parameters", {}), (blocks or {}).get(block), source, block, known)
    try:
        config = ModelConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise ConfigError(source, field, first["msg"]) from None
    if folder_name is not None:
        if not config.name:
            config.name = folder_name
        elif config.name != folder_name:
            raise ConfigError(source, "name", f"{config.name!r} does not match its folder {folder_name!r}")
    for block in BLOCKS:
        if getattr(config, block) is not None and config.platform == "ensemble":
            raise ConfigError(source, block, "is not served for ensembles (operate their steps instead)")
    if config.shadow is not None and config.sequence_batching is not None:
        raise ConfigError(source, "shadow", "is not served for sequence models (a copy would be a second request "
                                            "of the sequence)")
    for block in ("shadow", "payload_log", "drift"):
        if getattr(config, block) is not None and config.decoupled:
            raise ConfigError(source, block, "is not served for decoupled models yet (their streams pass it by)")
    if not MODEL_NAME.fullmatch(config.name) or config.name in (".", ".."):
        raise ConfigError(source, "name", f"{config.name!r} is not a valid model name")
    for key, least, strict in NUMBER_PARAMETERS:
        if key in config.parameters:
            try:
                number = float(config.parameter(key))
            except ValueError:
                raise ConfigError(source, f"parameters.{key}", "must be a number") from None
            if number < least or (strict and number == least) or number != number:
                raise ConfigError(source, f"parameters.{key}", f"must be {'>' if strict else '>='} {least:g}")
    return config
