"""Triton's ``triton_python_backend_utils`` (``pb_utils``) as models use it.

Triton Python models ``import triton_python_backend_utils as pb_utils``; the python backend makes this
module importable under that name, so their ``model.py`` files load unchanged. What it does not serve is
refused by name when a model reaches for it (module ``__getattr__``), never an AttributeError later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
from typing import Any, Callable, Iterator

import numpy as np

from deployments.backends import RequestInfo, bls, cancellation, response_parameters
from deployments.backends.python_api import Metric, MetricFamily, ModelConfig  # noqa: F401 (its names)
from deployments.config.dtypes import config_to_v2, numpy_dtype

#: Request flags (``request.flags()``): the first and the last request of a sequence.
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
#: The flag of a decoupled model's last send: the request is complete (with or without a response).
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

_log = logging.getLogger("ric.models")


class TritonError(Exception):
    """An error a model returns in a response (``InferenceResponse(error=...)``); its code decides the
    client's HTTP status and gRPC code, as on Triton (INTERNAL, the default: 500)."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1):
        super().__init__(message, code)
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


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

    def is_cpu(self) -> bool:
        return True  # tensors reach Python models in host memory

    def to_dlpack(self) -> Any:
        """A DLPack capsule of the tensor (``torch.from_dlpack`` reads it without a copy)."""
        return self._array.__dlpack__()

    @classmethod
    def from_dlpack(cls, name: str, tensor: Any) -> "Tensor":
        """A tensor from any object with ``__dlpack__`` (a torch tensor on the CPU, a numpy array)."""
        return cls(name, np.from_dlpack(tensor))


class Logger:
    """Triton's model logger: lines in the server's log, with the model's name."""

    @staticmethod
    def _log(level: int, message: str) -> None:
        calling = bls.current()
        model = calling.callers[-1] if calling and calling.callers else "?"
        _log.log(level, "model '%s': %s", model, message)

    @classmethod
    def log_info(cls, message: str) -> None:
        cls._log(logging.INFO, message)

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls._log(logging.WARNING, message)

    @classmethod
    def log_error(cls, message: str) -> None:
        cls._log(logging.ERROR, message)

    @classmethod
    def log_verbose(cls, message: str) -> None:
        cls._log(logging.DEBUG, message)

    @classmethod
    def log(cls, message: str, level: int = 0) -> None:
        levels = {0: logging.INFO, 1: logging.WARNING, 2: logging.ERROR, 3: logging.DEBUG}
        cls._log(levels.get(level, logging.INFO), message)


class InferenceResponseSender:
    """A decoupled model's way to answer a request with zero, one or many responses, from any thread;
    ``send(flags=TRITONSERVER_RESPONSE_COMPLETE_FINAL)`` (with or without a last response) completes it."""

    def __init__(self, emit: Callable[["InferenceResponse | None", bool], None], token: int = 0):
        self._emit, self._token = emit, token
        self._closed = False

    def send(self, response: "InferenceResponse | None" = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("the response sender is closed: the final flag was sent already")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        self._closed = final
        self._emit(response, final)

    def is_cancelled(self) -> bool:
        """Whether the request's client has gone (its responses would reach no one)."""
        return cancellation.is_cancelled(self._token)


class Trace:
    """A request's trace (``request.trace()``), passed to the requests a model sends (``InferenceRequest(...,
    trace=request.trace())``) so that each call is a span of the request's trace, as on Triton."""

    def __init__(self, context: dict | None = None):
        self._context = context

    def get_context(self) -> str | None:
        """The W3C trace context of a sampled request as JSON (None for a request that is not traced)."""
        return json.dumps(self._context) if self._context else None


class InferenceRequest:
    """A request: the one ``execute`` receives, or one a model builds to call another model (BLS) with
    ``exec()`` or ``await async_exec()``."""

    def __init__(self, model_name: str = "", inputs: list[Tensor] | None = None,
                 requested_output_names: list[str] | None = None, correlation_id: int | str = 0,
                 request_id: str = "", flags: int = 0, timeout: int = 0, parameters: dict | str | None = None,
                 model_version: int = -1, preferred_memory: Any = None, trace: Any = None):
        """``timeout`` in microseconds (0: the calling model's execution timeout); ``parameters`` a dict or
        its JSON text; ``model_version`` -1 for the newest."""
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._model, self._version = model_name, model_version
        self._inputs = list(inputs or [])
        self._requested = list(requested_output_names or [])
        self._info = RequestInfo(parameters or {}, tuple(self._requested), request_id, correlation_id, flags,
                                 timeout, trace=trace._context if isinstance(trace, Trace) else None)
        self._sender: InferenceResponseSender | None = None

    @classmethod
    def received(cls, inputs: list[Tensor], info: RequestInfo, all_outputs: list[str],
                 sender: InferenceResponseSender | None = None) -> "InferenceRequest":
        """A request as ``execute`` gets it: the outputs the client asked for, or else every output."""
        request = cls(inputs=inputs, requested_output_names=list(info.outputs or all_outputs))
        request._info, request._sender = info, sender
        return request

    def get_response_sender(self) -> InferenceResponseSender:
        if self._sender is None:
            raise TritonModelException("get_response_sender() is for decoupled models "
                                       "(model_transaction_policy { decoupled: true })")
        return self._sender

    def is_cancelled(self) -> bool:
        """Whether the request's caller has gone: the client disconnected, its deadline or the execution
        timeout passed (the model may stop early; its answer reaches no one)."""
        return cancellation.is_cancelled(self._info.token)

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> set[str]:
        """A set, as Triton's (the outputs the client asked for, or every output)."""
        return set(self._requested)

    def request_id(self) -> str:
        return self._info.request_id

    def correlation_id(self) -> int | str:
        return self._info.correlation_id

    def flags(self) -> int:
        return self._info.flags

    def timeout(self) -> int:
        return self._info.timeout_us

    def model_name(self) -> str:
        return self._model

    def trace(self) -> Trace:
        return Trace(self._info.trace)

    def parameters(self) -> str:
        """The request's parameters as a JSON string, as Triton gives them."""
        return json.dumps(self._info.parameters)

    def exec(self, decoupled: bool = False) -> "InferenceResponse | Iterator[InferenceResponse]":
        """Run this request on its model and wait: its response, or (``decoupled``) an iterator of them that
        gives each as the callee sends it."""
        if not decoupled:
            return _responses(self._submit(False).result(), False)
        arrived: queue.SimpleQueue = queue.SimpleQueue()
        done = self._submit(True, arrived.put)
        done.add_done_callback(lambda _: arrived.put(_END))
        return _one_by_one(arrived, done)

    async def async_exec(self, decoupled: bool = False) -> "InferenceResponse | Iterator[InferenceResponse]":
        """As ``exec``, awaited (calls gathered together run at once); a decoupled callee's responses all
        come before the iterator is returned."""
        return _responses(await asyncio.wrap_future(self._submit(decoupled)), decoupled)

    def _submit(self, decoupled: bool, each: Callable | None = None):
        calling = bls.current()
        if calling is None or calling.calls is None:
            raise TritonModelException("InferenceRequest.exec() runs inside a served model's initialize or "
                                       "execute")
        if not self._model:
            raise TritonModelException("InferenceRequest(model_name=...) names the model to call")
        info = self._info
        call = bls.BlsCall(self._model, {t.name(): t.as_numpy() for t in self._inputs}, self._requested or None,
                           None if self._version in (-1, None) else str(self._version), dict(info.parameters),
                           info.request_id, info.correlation_id, info.flags,
                           info.timeout_us / 1e6 if info.timeout_us else None, decoupled, calling.callers,
                           info.trace)
        return calling.calls.submit(call, each) if each is not None else calling.calls.submit(call)


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None,
                 parameters: dict | str | None = None):
        """``parameters``: a dict (or its JSON text) of bool, int, float or str values: the client gets them
        as the response's parameters."""
        self._outputs = output_tensors or []
        self._error = error
        self._parameters = json.loads(parameters) if isinstance(parameters, str) else parameters or {}
        if not isinstance(self._parameters, dict):
            raise TypeError(f"InferenceResponse parameters are a dict, not {type(self._parameters).__name__}")
        self._parameters = dict(self._parameters)
        for key, value in self._parameters.items():
            if not isinstance(key, str) or not isinstance(value, (bool, int, float, str)) or (
                    type(value) is int and not -2**63 <= value < 2**63):
                raise TypeError(f"InferenceResponse parameters are str keys with bool, int (64-bit), float or str "
                                f"values; {key!r} is {value!r}")

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


_END = object()


def _response(result) -> "InferenceResponse":
    """One result of a BLS call (a dict of arrays or an InferenceError) as the model reads it."""
    if isinstance(result, Exception):
        return InferenceResponse(error=TritonError(result.message, result.triton_code))
    return InferenceResponse([Tensor(name, array) for name, array in result.items()], None, response_parameters(result))


def _responses(results: list, decoupled: bool) -> "InferenceResponse | Iterator[InferenceResponse]":
    """A BLS call's results as the model reads them; a decoupled call's end with an empty response after the
    callee's last, as Triton's (unless the last is an error)."""
    responses = [_response(r) for r in results]
    if not decoupled:
        return responses[0]
    if not (responses and responses[-1].has_error()):
        responses.append(InferenceResponse())
    return iter(responses)


def _one_by_one(arrived: "queue.SimpleQueue", done) -> Iterator["InferenceResponse"]:
    """A decoupled call's responses as they arrive, then (unless the last is an error) Triton's empty one."""
    last = None
    while (result := arrived.get()) is not _END:
        last = _response(result)
        yield last
    for result in done.result():  # (a call refused before it was sent answers here)
        last = _response(result)
        yield last
    if last is None or not last.has_error():
        yield InferenceResponse()


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    """Whether a model of the application (that version, "" for any) is loaded and ready (BLS's way)."""
    calling = bls.current()
    if calling is None or calling.calls is None:
        raise TritonModelException("is_model_ready() runs inside a served model")
    call = bls.BlsCall(model_name, {}, version=str(model_version) or None, callers=calling.callers, kind="ready")
    (ready,) = calling.calls.submit(call).result()
    return ready is True


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load (or load again) a model of the repository through the repository API, as a client's load: allowed
    in explicit model control mode only. ``config``: its config as JSON; ``files``: {"file:<path>": bytes}."""
    if files and not all(isinstance(key, str) and key.startswith("file:") for key in files):
        raise TritonModelException("load_model files are named 'file:<version>/<name>'")
    _control(model_name, "load", {**({"config": config} if config else {}), **(files or {})})


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload a model through the repository API (explicit model control mode only); an ensemble's steps with
    ``unload_dependents``."""
    _control(model_name, "unload", {"unload_dependents": True} if unload_dependents else {})


def _control(model_name: str, kind: str, parameters: dict) -> None:
    calling = bls.current()
    if calling is None or calling.calls is None:
        raise TritonModelException(f"{kind}_model() runs inside a served model")
    if model_name in calling.callers:  # its replica would wait for the batch that waits for it
        raise TritonModelException(f"model '{model_name}' cannot be {kind}ed while its own batch waits for it")
    call = bls.BlsCall(model_name, {}, parameters=parameters, callers=calling.callers, kind=kind)
    (answer,) = calling.calls.submit(call).result()
    if isinstance(answer, Exception):
        raise TritonModelException(f"failed to {kind} model '{model_name}': {answer.message}")


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


def __getattr__(name: str):
    """Triton's API this server does not serve yet, refused by name."""
    raise AttributeError(f"pb_utils.{name} is not served by ric (docs/python_backend.md lists what is)")
