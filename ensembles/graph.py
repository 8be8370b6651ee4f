"""Ensemble schema and checks: the steps form a DAG, every tensor is produced once, steps fit their models.

Pure code (no Ray): the app builder runs :func:`check_graph` when it lists the repository; the Ensemble
deployment runs :func:`check_tensors` once its step models' completed configs are known.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.config.model_config import ConfigError, ModelConfig
from deployments.config.messages import TensorConfig

ENSEMBLE_PLATFORM = "ensemble"


class EnsembleStep(BaseModel):
    """One ``ensemble_scheduling.step``: a model and how its tensors map to the ensemble's."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(description="The step's model.")
    model_version: int = Field(default=-1, description="-1 is the newest ready version.")
    input_map: dict[str, str] = Field(default_factory=dict, description="Step model input -> ensemble tensor.")
    output_map: dict[str, str] = Field(default_factory=dict, description="Step model output -> ensemble tensor.")
    model_namespace: str = ""


class EnsembleScheduling(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: list[EnsembleStep] = Field(default_factory=list)


def is_ensemble(config: ModelConfig) -> bool:
    return config.platform == ENSEMBLE_PLATFORM


def scheduling(config: ModelConfig, source: str) -> EnsembleScheduling:
    raw = (config.model_extra or {}).get("ensemble_scheduling")
    if not raw:
        raise ConfigError(source, "ensemble_scheduling", "an ensemble needs ensemble_scheduling with steps")
    try:
        return EnsembleScheduling.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(source, "ensemble_scheduling." + ".".join(map(str, first["loc"])), first["msg"]) from None


def check_graph(config: ModelConfig, source: str, known_models: set[str]) -> list[EnsembleStep]:
    """Check the steps as a graph; return them in an order where each step follows its producers."""
    steps = scheduling(config, source).step
    if not steps:
        raise ConfigError(source, "ensemble_scheduling.step", "an ensemble needs at least one step")
    producer: dict[str, str] = {t.name: "the ensemble input" for t in config.input}
    for i, step in enumerate(steps):
        where = f"ensemble_scheduling.step[{i}]"
        if step.model_name == config.name:
            raise ConfigError(source, f"{where}.model_name", "an ensemble cannot be its own step")
        if step.model_name not in known_models:
            raise ConfigError(source, f"{where}.model_name", f"model '{step.model_name}' is not in the repository")
        if not step.input_map or not step.output_map:
            raise ConfigError(source, where, "a step needs input_map and output_map")
        for tensor in step.output_map.values():
            if tensor in producer:
                raise ConfigError(source, f"{where}.output_map",
                                  f"tensor '{tensor}' is produced twice: by {producer[tensor]} and step {i}")
            producer[tensor] = f"step {i} ('{step.model_name}')"
    for i, step in enumerate(steps):
        for tensor in step.input_map.values():
            if tensor not in producer:
                raise ConfigError(source, f"ensemble_scheduling.step[{i}].input_map",
                                  f"tensor '{tensor}' is not produced by any step or ensemble input")
    for tensor in config.output:
        if tensor.name not in producer or producer[tensor.name] == "the ensemble input":
            raise ConfigError(source, "output", f"ensemble output '{tensor.name}' is not produced by any step")
    return _topological(steps, {t.name for t in config.input}, source)


def _topological(steps: list[EnsembleStep], available: set[str], source: str) -> list[EnsembleStep]:
    ordered: list[EnsembleStep] = []
    remaining = list(range(len(steps)))
    available = set(available)
    while remaining:
        ready = [i for i in remaining if set(steps[i].input_map.values()) <= available]
        if not ready:
            raise ConfigError(source, "ensemble_scheduling.step",
                              f"steps {remaining} form a cycle: each waits for another's output")
        for i in ready:
            ordered.append(steps[i])
            available |= set(steps[i].output_map.values())
            remaining.remove(i)
    return ordered


def full_shape(config: ModelConfig, tensor: TensorConfig) -> list[int]:
    """A tensor's shape with the batch dim (-1) when the model batches."""
    return ([-1] if config.batching else []) + list(tensor.dims)


def _compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


def check_tensors(config: ModelConfig, steps: list[EnsembleStep], step_configs: dict[str, ModelConfig], source: str) -> None:
    """Check every mapped tensor against the (completed) step model configs: names, datatypes, shapes."""
    known: dict[str, tuple[str, list[int], str]] = {
        t.name: (t.datatype, full_shape(config, t), "the ensemble input") for t in config.input
    }
    for i, step in enumerate(steps):
        model = step_configs[step.model_name]
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        where = f"step {i} ('{step.model_name}')"
        for model_input, tensor in step.input_map.items():
            if model_input not in inputs:
                raise ConfigError(source, "ensemble_scheduling.step.input_map",
                                  f"{where} has no input '{model_input}'; it takes {sorted(inputs)}")
            datatype, shape, origin = known[tensor]
            wanted = inputs[model_input]
            if datatype != wanted.datatype or not _compatible(shape, full_shape(model, wanted)):
                raise ConfigError(
                    source, "ensemble_scheduling.step.input_map",
                    f"tensor '{tensor}' from {origin} is {datatype} {shape}, but {where} input '{model_input}' "
                    f"takes {wanted.datatype} {full_shape(model, wanted)}")
        for model_output, tensor in step.output_map.items():
            if model_output not in outputs:
                raise ConfigError(source, "ensemble_scheduling.step.output_map",
                                  f"{where} has no output '{model_output}'; it has {sorted(outputs)}")
            produced = outputs[model_output]
            known[tensor] = (produced.datatype, full_shape(model, produced), where)
    for tensor in config.output:
        datatype, shape, origin = known[tensor.name]
        if datatype != tensor.datatype or not _compatible(shape, full_shape(config, tensor)):
            raise ConfigError(source, "output", f"ensemble output '{tensor.name}' is {tensor.datatype} "
                              f"{full_shape(config, tensor)}, but {origin} produces {datatype} {shape}")
