"""The part of Triton's ``triton_python_backend_utils`` (``pb_utils``) that models use.

Triton Python models ``import triton_python_backend_utils as pb_utils``; the python backend makes this
module importable under that name, so their ``model.py`` files load unchanged.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from deployments.config.dtypes import config_to_v2, numpy_dtype


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


#: The flag of a decoupled model's last send: the request is complete (with or without a response).
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1


class InferenceResponseSender:
    """A decoupled model's way to answer a request with zero, one or many responses, from any thread;
    ``send(flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL)`` (with or without a last response) completes it."""

    def __init__(self, emit: Callable[["InferenceResponse | None", bool], None]):
        self._emit = emit
        self._closed = False

    def send(self, response: "InferenceResponse | None" = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("the response sender is closed: the final flag was sent already")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        self._closed = final
        self._emit(response, final)

    def is_cancelled(self) -> bool:
        return False


class InferenceRequest:
    def __init__(self, inputs: list[Tensor], requested_output_names: list[str], request_id: str = "",
                 parameters: dict | None = None, sender: InferenceResponseSender | None = None):
        self._inputs = inputs
        self._requested = requested_output_names
        self._id = request_id
        self._parameters = parameters or {}
        self._sender = sender

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException("get_response_sender() is for decoupled models "
                                       "(model_transaction_policy { decoupled: true })")
        return self._sender

    def is_cancelled(self) -> bool:
        return False

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
