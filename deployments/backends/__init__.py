"""Backends: one small interface (load / infer / unload), registered by name in a plain dict.

A backend is imported only when a model needs it, so a replica serving ONNX never imports torch.
``process.ProcessBackend`` runs any of them in a stub process of its own (Python models in the ingress).
May import ``deployments.config``, ``deployments.scheduling`` (batch arithmetic), ``deployments.observability``
(a model's own metrics) and ``deployments.errors``;
no Ray.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from deployments.backends import cancellation
from deployments.observability import custom_metrics
from deployments.scheduling import batching
from deployments.config.model_config import ModelConfig

Tensors = dict[str, np.ndarray]


class Outputs(dict):
    """A response's tensors by name with the response parameters its model set (Triton's
    ``InferenceResponse(parameters=...)``), which reach the client beside them. Plain dicts stand for the
    responses without parameters; ``keep_parameters`` carries them over to a dict made from this one."""

    def __init__(self, tensors: Tensors, parameters: dict):
        super().__init__(tensors)
        self.parameters = parameters


def response_parameters(outputs: Tensors) -> dict:
    """The response parameters that came with ``outputs`` (none for a plain dict)."""
    return getattr(outputs, "parameters", None) or {}


def keep_parameters(source: Tensors, tensors: Tensors) -> Tensors:
    """``tensors`` (made from ``source``: reshaped, chosen) with ``source``'s response parameters."""
    parameters = response_parameters(source)
    return Outputs(tensors, parameters) if parameters else tensors

#: Backend name -> "module:Class", imported on first use.
BACKENDS: dict[str, str] = {
    "onnxruntime": "deployments.backends.onnx:OnnxBackend",
    "pytorch": "deployments.backends.torchscript:TorchScriptBackend",
    "python": "deployments.backends.python:PythonBackend",
    "tensorrt": "deployments.backends.tensorrt:TensorRTBackend",
}

#: Default model file -> backend, for configs that name neither platform nor backend.
DEFAULT_FILES: dict[str, str] = {
    "model.onnx": "onnxruntime",
    "model.pt": "pytorch",
    "model.py": "python",
    "model.plan": "tensorrt",
}


@dataclass(frozen=True)
class RequestInfo:
    """What a backend that takes whole requests (Triton's Python backend) learns of each request beside its
    inputs (Triton's request API)."""

    parameters: dict = field(default_factory=dict)
    outputs: tuple[str, ...] | None = None  # those the client asked for; None: every output
    request_id: str = ""
    correlation_id: int | str = 0  # the sequence's id (0: none)
    flags: int = 0  # TRITONSERVER_REQUEST_FLAG_SEQUENCE_START (1) / _END (2)
    timeout_us: int = 0
    callers: tuple[str, ...] = ()  # the models whose batches wait for this request (BLS), outermost first
    token: int = 0  # its mark of cancellation in the replica (deployments/backends/cancellation.py); 0: none
    trace: dict | None = None  # a sampled request's span context (its BLS calls' spans join the trace)


class Backend(ABC):
    """Runs one version of one model inside a replica.

    ``load`` reads the model file and completes ``self.config`` from it where the config leaves
    inputs or outputs out; ``infer`` runs one batch; ``unload`` frees what ``load`` took.
    """

    name: ClassVar[str]
    default_filename: ClassVar[str]

    def __init__(self, config: ModelConfig, version_dir: Path, device: str = "cpu"):
        self.config = config
        self.version_dir = Path(version_dir)
        self.device = device
        #: Where the model's own requests to other models go (BLS; deployments/backends/bls.py), if anywhere.
        self.calls = None

    @property
    def model_path(self) -> Path:
        return self.version_dir / (self.config.default_model_filename or self.default_filename)

    @abstractmethod
    def load(self) -> None:
        """Load the model file; raise with a clear message if it cannot be served."""

    @abstractmethod
    def infer(self, inputs: Tensors) -> Tensors:
        """Run one batch (inputs already validated and merged); return every output."""

    def unload(self) -> None:
        """Free the model's memory."""

    def custom_metrics(self) -> dict:
        """A snapshot of the metric families the model made itself (deployments/observability/custom_metrics.py)."""
        return custom_metrics.REGISTRY.snapshot(self.config.name)

    def cancel(self, token: int) -> None:
        """The caller of the request with this token has gone: the model's ``is_cancelled()`` says so."""
        cancellation.cancel(token)

    def stream(self, inputs: Tensors, info: RequestInfo, emit) -> None:
        """One request of a decoupled model (zero or more responses); only the Python backend has them."""
        raise NotImplementedError(f"the {self.name} backend has no decoupled models")

    def execute(self, requests: list[Tensors], infos: list[RequestInfo] | None = None) -> list[Tensors | Exception]:
        """Run requests that share a batch signature, one result (or error) per request.

        The default merges them into one batch and splits the outputs back; a backend that takes a
        list of requests itself (Triton's Python backend) overrides this and also sees each request's
        ``infos`` (parameters, id, sequence, callers).
        """
        if not self.config.batching:
            return [self.infer(request) for request in requests]
        rows = [next(iter(request.values())).shape[0] for request in requests]
        return batching.split(self.infer(batching.merge(requests)), rows)


def backend_class(name: str) -> type[Backend]:
    """The backend registered under ``name``; raises ValueError listing the known ones."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known backends: {sorted(BACKENDS)}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def resolve_backend(config: ModelConfig, version_dirs: list[Path]) -> str:
    """The backend for a model: from its config, else from the default model file it ships."""
    if config.backend_name:
        return config.backend_name
    for version_dir in version_dirs:
        for filename, backend in DEFAULT_FILES.items():
            if (version_dir / filename).exists():
                return backend
    raise ValueError("no platform or backend is configured and no model.onnx/.pt/.py/.plan was found")
