"""The part of Triton's ``triton_python_backend_utils`` (``pb_utils``) that models use.

Triton Python models ``import triton_python_backend_utils as pb_utils``; the python backend makes this
module importable under that name, so their ``model.py`` files load unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deployments.dtypes import config_to_v2, numpy_dtype


class TritonError(Exception):
    def __init__(self, message: str, code: int = 0):
        super().__init__(message, code)
        self._message = message

    def message(self) -> str:
        return self._message


class TritonModelException(Exception):
    """Raised by a model to fail a whole ``execute`` call."""


class Tensor:
    def __init__(self, name: str, array: np.ndarray):
        self._name = name
        self._array = np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)


class InferenceRequest:
    def __init__(self, inputs: list[Tensor], requested_output_names: list[str], request_id: str = "",
                 parameters: dict | None = None):
        self._inputs = inputs
        self._requested = requested_output_names
        self._id = request_id
        self._parameters = parameters or {}

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> list[str]:
        return self._requested

    def request_id(self) -> str:
        return self._id

    def parameters(self) -> str:
        """The request's parameters as a JSON string, as Triton gives them."""
        return json.dumps(self._parameters)


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None):
        self._outputs = output_tensors or []
        self._error = error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return next((t for t in request.inputs() if t.name() == name), None)


def get_output_tensor_by_name(response: InferenceResponse, name: str) -> Tensor | None:
    return next((t for t in response.output_tensors() if t.name() == name), None)


def _tensor_config(model_config: Any, kind: str, name: str) -> dict | None:
    if isinstance(model_config, str):
        model_config = json.loads(model_config)
    return next((t for t in model_config.get(kind, []) if t["name"] == name), None)


def get_input_config_by_name(model_config: Any, name: str) -> dict | None:
    return _tensor_config(model_config, "input", name)


def get_output_config_by_name(model_config: Any, name: str) -> dict | None:
    return _tensor_config(model_config, "output", name)


def triton_string_to_numpy(triton_type: str) -> type:
    return numpy_dtype(config_to_v2(triton_type)).type
