"""Business logic scripting (BLS), the model's side: what a Python model's ``InferenceRequest.exec()`` and
``async_exec()`` hand over, and to whom.

A backend runs each batch of a Python model inside ``calling(calls, callers)``: ``calls`` is where the
model's requests go (in the replica, :class:`deployments.serving.bls.ModelCalls` on the event loop; in a
stub process, the pipe to the replica that started it), ``callers`` the models whose batches are waiting
for this one (the model itself last), carried with each call so that a model is never asked to answer a
request while its own batch waits for that answer (the batch would wait for itself: see
``deployments.serving.bls``). Threads the model starts itself (a decoupled model's senders) see the
process's default, set when the model loaded.
"""

from __future__ import annotations

import concurrent.futures
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

from deployments.backends import Tensors


@dataclass(frozen=True)
class BlsCall:
    """One request a model sends to a model of the application (pickles: it crosses the stub's pipe)."""

    model: str
    inputs: Tensors
    outputs: list[str] | None = None
    version: str | None = None  # None: the newest, as for a client
    parameters: dict = field(default_factory=dict)
    request_id: str = ""
    correlation_id: int | str = 0
    flags: int = 0  # TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END
    timeout_s: float | None = None  # None: the caller's execution timeout
    decoupled: bool = False  # every response of the callee, not one
    callers: tuple[str, ...] = ()
    trace: dict | None = None  # the calling request's span context (``trace=request.trace()``): a span per call
    #: "infer"; "ready": whether the model (``version``: that version) is ready (pb_utils.is_model_ready);
    #: "load" (``parameters``: the repository load's) or "unload": the repository API's (pb_utils.load_model).
    kind: str = "infer"


class Calls(Protocol):
    """Where a model's BLS requests go. ``submit`` may be called from any thread; its future's result is the
    list of the callee's responses, each a dict of arrays or an InferenceError (never raises). With ``each``,
    every response is handed to ``each(response)`` as it comes (from any thread) instead, in order, all of
    them before the future is done (whose list then holds none, or only a refusal)."""

    def submit(self, call: BlsCall, each: Callable[[Any], None] | None = None) -> concurrent.futures.Future: ...


@dataclass(frozen=True)
class Calling:
    calls: Calls | None
    callers: tuple[str, ...]


_current: ContextVar[Calling | None] = ContextVar("ric_bls_calling", default=None)
_default: Calling | None = None


@contextmanager
def calling(calls: Calls | None, callers: tuple[str, ...]) -> Iterator[None]:
    """Run a batch (or a model's ``initialize``) with its BLS requests going to ``calls``."""
    token = _current.set(Calling(calls, callers))
    try:
        yield
    finally:
        _current.reset(token)


def set_default(calls: Calls | None, callers: tuple[str, ...]) -> None:
    """Where requests sent from threads the model started go (the last model loaded in this process)."""
    global _default
    _default = Calling(calls, callers)


def current() -> Calling | None:
    return _current.get() or _default
