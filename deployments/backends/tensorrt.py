"""TensorRT backend: a serialized engine (``model.plan``) run with the TensorRT runtime on a GPU.

TensorRT and a CUDA device are needed (``pip install 'ray-inference-cluster[gpu,torch]'``); device
buffers are torch CUDA tensors, so no separate CUDA binding is required. Inputs and outputs are
completed from the engine's I/O tensors when the config leaves them out.
"""

from __future__ import annotations

import numpy as np

from deployments.backends import Backend, Tensors
from deployments.config.model_config import ConfigError
from deployments.config.messages import InputConfig, TensorConfig
from deployments.config.dtypes import v2_datatype, v2_to_config


class TensorRTBackend(Backend):
    name = "tensorrt"
    default_filename = "model.plan"

    def load(self) -> None:
        try:
            import tensorrt as trt
            import torch
        except ImportError:
            raise RuntimeError(
                "the tensorrt backend needs tensorrt and torch: pip install 'ray-inference-cluster[gpu,torch]'"
            ) from None
        if self.device != "cuda" or not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a GPU: set instance_group kind KIND_GPU")
        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(self.model_path.read_bytes())
        if self.engine is None:
            raise ValueError(f"{self.model_path.name} is not a TensorRT engine for this GPU and version")
        self.context = self.engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._complete([n for n in names if is_input[n]], [n for n in names if not is_input[n]])

    def _complete(self, input_names: list[str], output_names: list[str]) -> None:
        config = self.config.model_copy(deep=True)
        skip = 1 if config.batching else 0
        for kind, names in (("input", input_names), ("output", output_names)):
            tensors: list[TensorConfig] = getattr(config, kind)
            if not tensors:
                for name in names:
                    dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
                    shape = list(self.engine.get_tensor_shape(name))[skip:]
                    tensor_class = InputConfig if kind == "input" else TensorConfig
                    tensors.append(tensor_class(name=name, data_type=v2_to_config(v2_datatype(dtype)),
                                                dims=[d if d >= 0 else -1 for d in shape]))
            for i, tensor in enumerate(tensors):
                if tensor.name not in names:
                    raise ConfigError(str(self.model_path), f"{kind}[{i}].name",
                                      f"the engine has no {kind} '{tensor.name}'; it has {names}")
        self.config = config

    def infer(self, inputs: Tensors) -> Tensors:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            keep = []
            for name, array in inputs.items():
                tensor = torch.from_numpy(np.ascontiguousarray(array)).cuda()
                keep.append(tensor)
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            outputs = {}
            for tensor_config in self.config.output:
                name = tensor_config.name
                dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
                shape = tuple(self.context.get_tensor_shape(name))
                buffer = torch.empty(shape, dtype=getattr(torch, dtype.name), device="cuda")
                self.context.set_tensor_address(name, buffer.data_ptr())
                outputs[name] = buffer
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self._stream.synchronize()
        return {name: buffer.cpu().numpy() for name, buffer in outputs.items()}

    def unload(self) -> None:
        self.context = None
        self.engine = None
