"""TorchScript backend (Triton's ``pytorch`` backend): ``model.pt`` loaded with ``torch.jit.load``.

Inputs are passed positionally: by the index in Triton's ``INPUT__<i>`` names, else by the names of
``forward``'s arguments, else in config order. Outputs are taken from the returned tensor, tuple or
dict: by ``OUTPUT__<i>`` index, by key, or in config order.
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np

from deployments.backends import Backend, Tensors
from deployments.config.messages import TensorConfig

_INDEXED = re.compile(r"__(\d+)$")


def _indexed_order(tensors: list[TensorConfig]) -> list[str] | None:
    """Names sorted by their ``__<i>`` suffix, if every name has one."""
    matches = [(_INDEXED.search(t.name), t.name) for t in tensors]
    if not all(match for match, _ in matches):
        return None
    return [name for match, name in sorted(matches, key=lambda m: int(m[0].group(1)))]


class TorchScriptBackend(Backend):
    name = "pytorch"
    default_filename = "model.pt"

    def load(self) -> None:
        try:
            import torch
        except ImportError:
            raise RuntimeError(
                "the pytorch backend needs torch: pip install 'ray-inference-cluster[torch]'"
            ) from None
        self._torch = torch
        use_cuda = self.device == "cuda" and torch.cuda.is_available()
        self._device = torch.device("cuda" if use_cuda else "cpu")
        self.module = torch.jit.load(str(self.model_path), map_location=self._device)
        self.module.eval()
        if any(t.datatype == "BYTES" for t in self.config.input + self.config.output):
            raise ValueError("the pytorch backend does not take BYTES tensors")
        self._input_order = _indexed_order(self.config.input) or self._forward_order()
        self._output_names = [t.name for t in self.config.output]

    def _forward_order(self) -> list[str]:
        names = [t.name for t in self.config.input]
        try:
            arguments = [arg.name for arg in self.module.forward.schema.arguments][1:]  # drop self
        except AttributeError:
            return names
        return arguments if sorted(arguments) == sorted(names) else names

    def infer(self, inputs: Tensors) -> Tensors:
        torch = self._torch
        with torch.inference_mode():
            args = [self._to_torch(inputs[name]) for name in self._input_order if name in inputs]
            result = self.module(*args)
        if isinstance(result, dict):
            return {name: self._to_numpy(result[name]) for name in self._output_names}
        tensors = list(result) if isinstance(result, (tuple, list)) else [result]
        order = _indexed_order(self.config.output)
        if order is not None:
            indices = {name: int(_INDEXED.search(name).group(1)) for name in order}
            return {name: self._to_numpy(tensors[indices[name]]) for name in self._output_names}
        return {name: self._to_numpy(tensor) for name, tensor in zip(self._output_names, tensors)}

    def _to_torch(self, array: np.ndarray):
        torch = self._torch
        if array.dtype == ml_dtypes.bfloat16:
            tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
        else:
            tensor = torch.as_tensor(array)
        return tensor.to(self._device)

    def _to_numpy(self, tensor) -> np.ndarray:
        tensor = tensor.detach().cpu()
        if tensor.dtype == self._torch.bfloat16:
            return tensor.view(self._torch.int16).numpy().view(ml_dtypes.bfloat16)
        return tensor.numpy()

    def unload(self) -> None:
        self.module = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()
