"""onnxruntime backend: CPU here, the CUDA (and, when the config asks, TensorRT) provider on a GPU."""

from __future__ import annotations

import logging

import numpy as np

from deployments.backends import Backend, Tensors
from deployments.config.model_config import ConfigError, ModelConfig
from deployments.config.messages import DynamicBatching, InputConfig, TensorConfig

logger = logging.getLogger(__name__)

#: onnxruntime type string -> Triton config type.
ONNX_TYPES = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16",
    "tensor(string)": "TYPE_STRING",
}

#: Triton's default for auto-completed batching models (``--backend-config=default-max-batch-size``).
DEFAULT_MAX_BATCH_SIZE = 4


class OnnxBackend(Backend):
    name = "onnxruntime"
    default_filename = "model.onnx"

    def load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        for key, attribute in (("intra_op_thread_count", "intra_op_num_threads"),
                               ("inter_op_thread_count", "inter_op_num_threads")):
            value = self.config.parameter(key)
            if value:
                setattr(options, attribute, int(value))
        self.session = ort.InferenceSession(
            str(self.model_path), options, providers=self._providers(ort.get_available_providers())
        )
        self.config = complete_config(self.config, self.session, str(self.model_path))
        states = self.config.sequence_batching.state if self.config.sequence_batching else []
        self._output_names = [tensor.name for tensor in self.config.output] + [state.output_name for state in states]
        self._string_inputs = [t.name for t in self.config.input if t.datatype == "BYTES"]
        self._string_outputs = [t.name for t in self.config.output if t.datatype == "BYTES"]

    def _providers(self, available: list[str]) -> list[str]:
        wanted = ["CPUExecutionProvider"]
        if self.device == "cuda":
            wanted.insert(0, "CUDAExecutionProvider")
            if _asks_for_tensorrt(self.config):
                wanted.insert(0, "TensorrtExecutionProvider")
        missing = [p for p in wanted if p not in available]
        if missing:
            logger.warning("model '%s': onnxruntime lacks %s; running on %s", self.config.name, missing,
                           [p for p in wanted if p in available])
        return [p for p in wanted if p in available]

    @property
    def providers(self) -> list[str]:
        """The execution providers the session really uses."""
        return self.session.get_providers()

    def infer(self, inputs: Tensors) -> Tensors:
        if self._string_inputs:  # onnxruntime takes str, the protocol carries bytes
            inputs = {**inputs, **{name: _decode(inputs[name]) for name in self._string_inputs}}
        results = dict(zip(self._output_names, self.session.run(self._output_names, inputs)))
        for name in self._string_outputs:
            results[name] = _encode(results[name])
        return results

    def unload(self) -> None:
        self.session = None


def _decode(array: np.ndarray) -> np.ndarray:
    return np.array([item.decode() for item in array.reshape(-1)], dtype=object).reshape(array.shape)


def _encode(array: np.ndarray) -> np.ndarray:
    return np.array([item.encode() for item in array.reshape(-1)], dtype=object).reshape(array.shape)


def _asks_for_tensorrt(config: ModelConfig) -> bool:
    accelerators = (config.model_extra or {}).get("optimization", {}).get("execution_accelerators", {})
    return any(a.get("name") == "tensorrt" for a in accelerators.get("gpu_execution_accelerator", []))


def complete_config(config: ModelConfig, session, source: str) -> ModelConfig:
    """Fill inputs, outputs and max_batch_size from the ONNX model, as Triton's auto-complete does.

    Configured tensors are checked against the model: a name the model lacks or a wrong data_type is
    a ConfigError naming the field.
    """
    model_inputs = {node.name: node for node in session.get_inputs()}
    model_outputs = {node.name: node for node in session.get_outputs()}
    config = config.model_copy(deep=True)
    if not config.input and not config.output and config.max_batch_size == 0:
        nodes = list(model_inputs.values()) + list(model_outputs.values())
        if all(node.shape and not isinstance(node.shape[0], int) for node in nodes):
            config.max_batch_size = DEFAULT_MAX_BATCH_SIZE
            if config.dynamic_batching is None:
                config.dynamic_batching = DynamicBatching()
    skip = 1 if config.batching else 0
    for kind, nodes in (("input", model_inputs), ("output", model_outputs)):
        tensors: list[TensorConfig] = getattr(config, kind)
        if not tensors:
            tensors.extend(_tensor_config(node, skip, source, kind) for node in nodes.values())
            continue
        for i, tensor in enumerate(tensors):
            node = nodes.get(tensor.name)
            if node is None:
                raise ConfigError(source, f"{kind}[{i}].name", f"the model has no {kind} '{tensor.name}'; "
                                  f"it has {sorted(nodes)}")
            if ONNX_TYPES.get(node.type) != tensor.data_type:
                raise ConfigError(source, f"{kind}[{i}].data_type",
                                  f"{tensor.data_type} does not match the model's {node.type}")
    return config


def _tensor_config(node, skip: int, source: str, kind: str) -> TensorConfig:
    if node.type not in ONNX_TYPES:
        raise ConfigError(source, kind, f"'{node.name}' has type {node.type}, which cannot be served")
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape[skip:]]
    tensor_class = InputConfig if kind == "input" else TensorConfig
    return tensor_class(name=node.name, data_type=ONNX_TYPES[node.type], dims=dims)
