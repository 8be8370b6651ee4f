"""Business logic scripting (BLS), the replica's side: a Python model's ``InferenceRequest.exec()`` reaches any
model of the application, on any node.

``ModelCalls`` runs each call on the replica's event loop: in process when the callee is served in this
process (a model an Ingress colocates, through its LocalHandle), through the callee's Serve handle
otherwise, so the call gets the callee's dynamic batching, versions, queue policy and statistics as a
client's request would. A decoupled callee's responses are handed on as they come (``submit(call, each)``).

**Why a BLS model does not deadlock its replica.** A model's batch runs on its replica's one executor thread
(or its stub process), and its BLS calls wait inside that batch. Every call carries the models whose
batches wait for it (``callers``, outermost first); a model asked to answer a request whose callers hold it
refuses at once (``ModelService``, INVALID_ARGUMENT naming the chain) instead of queueing the request behind
the very batch that waits for it. Every other callee runs on its own executor, so the wait ends; and every
call is bounded by its timeout (the request's ``timeout``, else the calling model's execution timeout).
What the chain cannot see, the timeout ends: a call from a thread the model started itself carries only the
model's own name, and two independent requests ``a -> b`` and ``b -> a`` at once on single-replica models
wait on each other until one call times out. A call from ``initialize`` during the replica's first load
(which runs on the event loop the call would need) is refused at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Awaitable, Callable

from ray import serve

from deployments.backends import Tensors
from deployments.backends.bls import BlsCall
from deployments.errors import ErrorCode, InferenceError, invalid, unavailable, unknown_model
from deployments.serving.served import answer, sized_for, stream_of

logger = logging.getLogger(__name__)

#: The request flags of a sequence's first and last request (Triton's), as the sequence parameters.
SEQUENCE_START, SEQUENCE_END = 1, 2


class ModelCalls:
    """Where the BLS requests of the models in one replica go (``bls.Calls``)."""

    def __init__(self, handle: Callable[[str], Awaitable[Any]], timeout_s: Callable[[], float],
                 loop: asyncio.AbstractEventLoop, control: Callable[[str, bool, dict], Awaitable[None]] | None = None,
                 tracer: Callable[[], Any] = lambda: None):
        """``handle(model)``: the callee's handle (awaited; raises for a model the application does not
        serve); ``timeout_s()``: a call's bound when it sets none (the caller's execution timeout);
        ``control(model, loaded, parameters)``: the repository API's load / unload (None: not offered);
        ``tracer()``: the replica's Tracer (a call with its request's trace is a span of it), or None."""
        self._handle, self._timeout_s, self._loop, self._control = handle, timeout_s, loop, control
        self._tracer = tracer
        self._loop_thread = threading.get_ident()  # built on the loop's thread

    def submit(self, call: BlsCall, each: Callable[[Any], None] | None = None) -> concurrent.futures.Future:
        if threading.get_ident() == self._loop_thread:
            # A model's first load runs on the event loop (the replica's constructor): a call from its
            # initialize would wait for the loop it blocks.
            refused: concurrent.futures.Future = concurrent.futures.Future()
            refused.set_result([unavailable(f"model '{call.callers[-1] if call.callers else '?'}' called "
                                            f"'{call.model}' from initialize while its replica starts: BLS calls "
                                            "are served from execute (and from initialize on later loads)")])
            return refused
        return asyncio.run_coroutine_threadsafe(self.run(call, each), self._loop)

    async def run(self, call: BlsCall, each: Callable[[Any], None] | None = None) -> list[Tensors | InferenceError]:
        """The callee's responses (one unless ``call.decoupled``); a failure is the last, as an error. With
        ``each``, each is handed to it as it comes instead (the list returned is then empty)."""
        responses: list[Tensors | InferenceError] = _Passing(each) if each is not None else []
        # A load or unload is bounded by the repository API's own timeout.
        timeout = None if call.kind in ("load", "unload") else call.timeout_s or self._timeout_s()
        try:
            await asyncio.wait_for(self._call(call, responses), timeout)
        except asyncio.TimeoutError:
            responses.append(unavailable(f"the call to model '{call.model}' did not finish within {timeout:g} s"))
        except Exception as exc:
            responses.append(InferenceError.from_exception(exc))
        return list(responses)

    async def _call(self, call: BlsCall, responses: list) -> None:
        if call.kind == "ready":
            responses.append(await self._ready(call.model, call.version))
            return
        if call.kind in ("load", "unload"):
            if self._control is None:
                raise unavailable("this replica offers no model control to its models")
            await self._control(call.model, call.kind == "load", call.parameters)
            responses.append(True)
            return
        try:
            handle = sized_for(await self._handle(call.model), call.inputs)
        except InferenceError as exc:  # a model the application does not serve (now): Triton's code and words
            raise InferenceError(ErrorCode.INTERNAL, f"Model {call.model} - Error when running inference: Failed "
                                 f"for execute the inference request. Model '{call.model}' is not ready. "
                                 f"({exc})") from None
        parameters = dict(call.parameters)
        if call.correlation_id not in (0, ""):
            parameters.update(sequence_id=call.correlation_id, sequence_start=bool(call.flags & SEQUENCE_START),
                              sequence_end=bool(call.flags & SEQUENCE_END))
        args = (call.inputs, call.outputs, call.version, parameters or None)
        context = {"request_id": call.request_id, "callers": call.callers}
        tracer = self._tracer() if call.trace else None
        span = tracer and tracer.span(f"BLS {call.model}", call.trace, model=call.model,
                                      caller=call.callers[-1] if call.callers else None)
        if span is not None:  # the callee's spans go below this one
            context["trace"] = tracer.carried(span)
        try:
            if call.decoupled:
                async for _, outputs in stream_of(handle.options(stream=True).infer_stream.remote(*args, **context)):
                    responses.append(outputs)
            else:
                _, outputs = await answer(handle.infer_versioned.remote(*args, **context))
                responses.append(outputs)
        finally:
            if span is not None:
                span.end()


    async def _ready(self, model: str, version: str | None) -> bool:
        """Whether the application serves ``model`` (that ``version``) now, ready to answer."""
        try:
            handle = await self._handle(model)
            if not version:
                return bool(await handle.ready.remote())
            return str(version) in (await handle.metadata.remote())["versions"]
        except Exception:  # unknown, unloaded, failed: not ready
            return False


class _Passing(list):
    """A list of responses that hands each on as it is appended instead of keeping it."""

    def __init__(self, each: Callable[[Any], None]):
        super().__init__()
        self._each = each

    def append(self, response: Any) -> None:
        self._each(response)


def refuse_cycle(model: str, callers: tuple[str, ...]) -> None:
    """A request from a BLS call whose callers include ``model`` would wait behind the batch that waits for
    it: refused at once."""
    if model in callers:
        raise invalid(f"model '{model}' cannot answer a BLS call made while its own batch waits for the answer "
                      f"({' -> '.join([*callers, model])}): the call would wait for itself")


class ApplicationModels:
    """The handles of the models a Model replica's BLS calls reach: its application's, and those loaded
    later as applications of their own (``<app>-model-<name>``, cluster/repository/model_apps.py), found in
    Serve's status once per name; no other application's deployments. A replica of a model loaded later
    reaches the application it was loaded into the same way."""

    def __init__(self, ingress: str = ""):
        """``ingress``: the name of the application's Ingress deployment (which finds the application a model
        loaded later belongs to, and answers ``control``)."""
        self._app, self._ingress = serve.get_replica_context().app_name, ingress
        self._handles: dict[str, Any] = {}

    @staticmethod
    async def _status():
        return (await asyncio.to_thread(serve.status)).applications

    def _parent(self, applications) -> str | None:
        """The application with the Ingress: this one, or the one this model was loaded into."""
        return next((a for a, s in applications.items() if self._ingress and self._ingress in s.deployments
                     and (a == self._app or self._app.startswith(f"{a}-model-"))), None)

    async def handle(self, model: str) -> Any:
        if model not in self._handles:
            applications = await self._status()
            parent = self._parent(applications) or self._app
            apps = (self._app, parent, f"{parent}-model-{model}")
            app = next((a for a in apps if a in applications and model in applications[a].deployments), None)
            if app is None:
                raise unknown_model(model)
            self._handles[model] = serve.get_deployment_handle(model, app_name=app)
        return self._handles[model]

    async def control(self, model: str, loaded: bool, parameters: dict) -> None:
        """Load or unload ``model`` through an Ingress replica's repository API (its model control mode
        decides)."""
        app = self._parent(await self._status())
        if app is None:
            raise unavailable("no Ingress of this application answers model control")
        await answer(serve.get_deployment_handle(self._ingress, app_name=app).set_loaded.remote(model, loaded,
                                                                                                  parameters))
