"""The stub process's side of a backend run in a process of its own (deployments/backends/process.py has
the replica's side, ProcessBackend): the process loads the model, answers each batch that comes down the
pipe and sends the model's BLS calls up it. And how tensors travel the pipe both ways: as
(name, dtype, shape, buffer) tuples pickled with protocol 5 (``packed``), several times cheaper to pickle
than numpy arrays through their reduce, with request infos as tuples of their fields.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import itertools
import operator
import pickle
import queue
import signal
import sys
import threading
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Callable

import numpy as np

from deployments.backends import Outputs, RequestInfo, Tensors, backend_class, cancellation, response_parameters
from deployments.backends.bls import BlsCall
from deployments.config.model_config import ModelConfig
from deployments.errors import ErrorCode, InferenceError
from deployments.observability.custom_metrics import REGISTRY

_INFO_FIELDS = operator.attrgetter(*(field.name for field in fields(RequestInfo)))


def send(connection, message) -> None:
    """One message down or up the pipe (multiprocessing's framing, pickle protocol 5 for ``packed``)."""
    connection.send_bytes(pickle.dumps(message, protocol=5))


def packed(tensors: Tensors) -> tuple:
    """Tensors (and an answer's response parameters) as values that pickle fast: each one's dtype, shape and
    bytes (a view, copied once into the pickle); a BYTES (object) tensor travels as itself."""
    return ([(name, None, None, array) if array.dtype == object else
             (name, array.dtype, array.shape, pickle.PickleBuffer(np.ascontiguousarray(array).reshape(-1)
                                                                  .view(np.uint8)))
             for name, array in tensors.items()], response_parameters(tensors))


def unpacked(value: tuple) -> Tensors:
    """``packed``'s tensors back, as writable arrays (as a model in process gets them)."""
    items, parameters = value
    tensors = {name: array if dtype is None else
               np.frombuffer(bytearray(array) if isinstance(array, bytes) else array, np.uint8).view(dtype)
               .reshape(shape) for name, dtype, shape, array in items}
    return Outputs(tensors, parameters) if parameters else tensors


def packed_infos(infos: list[RequestInfo] | None, count: int) -> list[tuple]:
    return [_INFO_FIELDS(info) for info in infos] if infos is not None else [_INFO_FIELDS(RequestInfo())] * count


def unpacked_infos(values: list[tuple]) -> list[RequestInfo]:
    return [RequestInfo(*value) for value in values]


def _portable(exc: BaseException) -> BaseException:
    """The exception itself for the parent, which handles it as if raised there; one that does not pickle
    becomes a RuntimeError naming its type. The traceback of one that is not a client's error goes to the
    stub's standard error, the replica's log."""
    if not isinstance(exc, InferenceError):
        traceback.print_exception(exc)
    try:
        pickle.loads(pickle.dumps(exc))  # some exceptions pickle but do not unpickle
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__} (not picklable; the server log has the details)")


class _Pipe:
    """The stub's end of the pipe: one reader thread takes every message the replica sends, handing work to
    the main loop and answers to the BLS calls waiting for them (from any thread of the model's)."""

    def __init__(self, connection):
        self._connection = connection
        self._send_lock = threading.Lock()
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: dict[int, concurrent.futures.Future] = {}
        self._streams: dict[int, Callable] = {}  # calls whose responses come one by one -> where each goes
        self._ids = itertools.count()
        self._closed = False
        threading.Thread(target=self._read, name="ric-stub-reader", daemon=True).start()

    def send(self, message) -> None:
        with self._send_lock:
            send(self._connection, message)

    def next_work(self):
        """The replica's next message: ("execute", ...), ("unload",), or None once the pipe closed."""
        return self._work.get()

    def submit(self, call: BlsCall, each: Callable | None = None) -> concurrent.futures.Future:
        """A BLS call, answered by the replica (bls.Calls)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._closed:
            future.set_result([InferenceError(ErrorCode.UNAVAILABLE, "the replica went away")])
            return future
        number = next(self._ids)
        self._waiting[number] = future
        if each is not None:
            self._streams[number] = each
        try:
            self.send(("call", number, call, each is not None))
        except Exception as exc:  # the replica went away, or the call does not pickle
            self._waiting.pop(number, None)
            self._streams.pop(number, None)
            future.set_result([InferenceError(ErrorCode.INTERNAL, f"the call to model '{call.model}' could "
                                              f"not be sent: {type(exc).__name__}: {exc}")])
        return future

    def _read(self) -> None:
        while True:
            try:
                message = self._connection.recv()
            except (EOFError, OSError):
                break
            if message[0] == "part":  # one response of a call answered one by one
                each = self._streams.get(message[1])
                if each is not None:
                    each(message[2])
            elif message[0] == "called":
                self._streams.pop(message[1], None)
                future = self._waiting.pop(message[1], None)
                if future is not None:
                    future.set_result(message[2])
            elif message[0] == "cancel":  # a request's caller has gone (marked while its batch is here)
                cancellation.cancel(message[1])
            else:
                if message[0] == "execute":  # tracked before a cancel that follows it can come
                    message = ("execute", [unpacked(r) for r in message[1]], unpacked_infos(message[2]))
                    for info in message[2]:
                        if info.token:
                            cancellation.begin(info.token)
                self._work.put(message)
        self._closed = True
        self._streams.clear()
        for number in list(self._waiting):
            future = self._waiting.pop(number, None)
            if future is not None:
                future.set_result([InferenceError(ErrorCode.UNAVAILABLE, "the replica went away")])
        self._work.put(None)


def serve(connection, backend_name: str, config: ModelConfig, version_dir: str, device: str) -> None:
    """The stub process: load the backend, then answer ``("execute", requests, infos)`` until ``("unload",)``
    or the pipe closes; the model's BLS calls go up the same pipe. It ends with the replica that started it,
    however that ends."""
    _end_with_parent()
    pipe = _Pipe(connection)
    backend = backend_class(backend_name)(config, Path(version_dir), device)
    backend.calls = pipe
    try:
        backend.load()
    except Exception as exc:
        pipe.send(("failed", _portable(exc)))
        return
    sent = REGISTRY.changes
    pipe.send(("loaded", backend.config, REGISTRY.snapshot()))
    while (message := pipe.next_work()) is not None and message[0] != "unload":
        _, requests, infos = message
        try:
            results = backend.execute(requests, infos)
            answer = ("done", [_portable(r) if isinstance(r, Exception) else packed(r) for r in results])
        except Exception as exc:
            answer = ("error", _portable(exc))
        finally:
            for info in infos:
                cancellation.end(info.token)
        changed, sent = REGISTRY.changes != sent, REGISTRY.changes  # the model's own metrics, when they moved
        pipe.send((*answer, REGISTRY.snapshot() if changed else None))
    backend.unload()
    try:
        pipe.send(("unloaded",))
    except OSError:  # the parent went away meanwhile
        pass


def _end_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux), even one wedged in the model's code:
    a replica killed by Ray or the OOM killer runs no cleanup of its own."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
