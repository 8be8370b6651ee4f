"""Models of a running ``ric serve`` (or a ``serve deploy``-ed application) from another Ray job.

    from cluster.client import connect
    simple = connect().model("simple")
    simple.infer({"INPUT0": x, "INPUT1": x})          # dict of numpy arrays -> dict of numpy arrays
    for outputs in connect().model("text_generator").stream({"TEXT": ...}):   # a decoupled model's responses
        ...

A local ``ric serve`` keeps its Ray on 127.0.0.1 and Ray turns token authentication on for it, so a plain
``ray.init(address=...)`` from another shell would look for its node at the machine's other address and
then be refused without the token. ``ric serve`` therefore writes what a client needs (Ray address, node
address, authentication, application) to ``~/.ric/serve.json`` (``RIC_STATE_DIR``), and :func:`connect`
reads it and joins with those settings. Inside a Ray job (``ray job submit``, or after ``ray.init``),
``connect`` uses that job's cluster.

Where an ingress replica of the application listens on the caller's node, ``infer`` and ``infer_async`` post
to that listener as an HTTP client would (cluster/listener_client.py: 3-10x the calls per second of a
Serve handle here); elsewhere, for streams, for requests larger than the listener takes, and with
``connect(..., listener=False)``, they call the model's Serve handle. Handle calls run on the client's
own event loop thread, so synchronous ``infer`` works in any process (with
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` set, as on a cluster started for speed, Serve's synchronous
``result()`` needs a running loop) and ``infer_async`` works in the caller's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import queue
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import numpy as np

from cluster.listener_client import Listener, ListenerRefused, ListenerRoute, probe
from cluster.names import APP_NAME, INGRESS_NAME, MODEL_APP_SEPARATOR, RESERVED_NAMES
from deployments.serving.served import answer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerRecord:
    """What ``ric serve`` tells clients on the same machine about the cluster it runs."""

    address: str  # Ray's GCS address
    node_ip: str  # the address the local Ray's nodes use (127.0.0.1 for ric serve's own)
    auth_mode: str  # Ray's RAY_AUTH_MODE: "token" or "disabled"
    app: str
    http: str
    grpc: str
    pid: int


def state_file() -> Path:
    return Path(os.environ.get("RIC_STATE_DIR", Path.home() / ".ric")).expanduser() / "serve.json"


def write_record(record: ServerRecord) -> Path:
    """Write the record (readable by this user only: it points at a cluster that runs code)."""
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.write_text(json.dumps(asdict(record)))
    staging.chmod(0o600)
    os.replace(staging, path)
    return path


def remove_record(pid: int) -> None:
    """Remove the record if it is this process's (a later ric serve may have replaced it)."""
    record = read_record()
    if record is not None and record.pid == pid:
        state_file().unlink(missing_ok=True)


def read_record() -> ServerRecord | None:
    try:
        return ServerRecord(**json.loads(state_file().read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def connect(address: str | None = None, app: str | None = None, *, ray_logging_level: int = logging.INFO,
            listener: bool = True) -> "Client":
    """Join the cluster that serves the models, and return a :class:`Client` for application ``app``.

    Which cluster: the one this process already joined (``ray.init`` done, or a ``ray job submit``
    driver, where ``RAY_ADDRESS`` is set), else ``address``, else the running ``ric serve``'s. Raises
    ``ConnectionError`` saying what to do when there is none. ``ray_logging_level``: the level of Ray's own
    messages while it joins (``ric status`` passes WARNING, so that its table is all it prints).
    ``listener``: False sends every call through the models' Serve handles.
    """
    import ray

    record = read_record()
    if record is not None and not _running(record.pid):
        record = None
    if not ray.is_initialized():
        if address is None and os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level=ray_logging_level)
        elif address is None and record is None:
            raise ConnectionError(
                f"no running 'ric serve' found ({state_file()} is missing or stale): start one, or pass "
                "connect(address='<ray address>') for a cluster started otherwise"
            )
        else:
            _join(address or record.address, record if address in (None, getattr(record, "address", None)) else None,
                  ray_logging_level)
    return Client(app or (record.app if record else APP_NAME), listener=listener)


def _join(address: str, record: ServerRecord | None, ray_logging_level: int) -> None:
    """``ray.init`` with the node address and authentication the recorded server uses.

    Ray reads both settings from the environment once (the loopback one when ``ray`` is imported, the
    authentication mode into its cached config), so they are set here and the values Ray already read are
    refreshed: the user may well have imported ``ray`` before calling :func:`connect`.
    """
    import ray

    if record is not None and record.node_ip == "127.0.0.1":
        # Else Ray rewrites 127.0.0.1 in the address to this machine's other address and never connects.
        from ray._private import ray_constants

        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    if record is not None and record.auth_mode == "token" and "RAY_AUTH_MODE" not in os.environ:
        from ray._raylet import Config

        os.environ["RAY_AUTH_MODE"] = "token"  # the token itself is read from ~/.ray/auth_token
        Config.initialize("")
    node_ip = record.node_ip if record is not None else None
    ray.init(address=address, _node_ip_address=node_ip, log_to_driver=False, logging_level=ray_logging_level)


class Client:
    """Handles to the models of one application, found by name (models loaded later included)."""

    def __init__(self, app: str = APP_NAME, listener: bool = True):
        self.app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ric-client", daemon=True)
        self._thread.start()
        self._route: ListenerRoute | None = None
        self._looked_for_listener = not listener

    def close(self) -> None:
        """Close the listener connections of the client's loop and stop it (its handles stop with it)."""
        if self._route is not None:
            asyncio.run_coroutine_threadsafe(self._close_route(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _close_route(self) -> None:
        self._route.close()

    def route(self) -> ListenerRoute | None:
        """The way to the application's ingress listener where one answers on this node (the ingress is
        asked once per client), shared by every model's client."""
        if not self._looked_for_listener:
            listener = asyncio.run_coroutine_threadsafe(self._find_listener(), self._loop).result(60)
            self._route = ListenerRoute(listener) if listener is not None else None
            self._looked_for_listener = True
        return self._route

    async def _find_listener(self) -> Listener | None:
        from ray import serve

        try:
            said = await serve.get_deployment_handle(INGRESS_NAME, app_name=self.app).listener.remote()
        except Exception as exc:  # no ingress, or one from before listener(): the handles it is
            logger.info("ric client: no ingress listener to use (%s); calling the models' handles", exc)
            return None
        if said is None:
            return None
        listener = Listener(**said)
        if not await probe(listener):
            logger.info("ric client: no ingress listener on this node at %s:%s; calling the models' handles",
                        listener.address, listener.port)
            return None
        return listener

    def models(self) -> dict[str, str]:
        """Every model and ensemble deployment the application serves, with the Serve application holding it."""
        from ray import serve

        found = {}
        for name, status in serve.status().applications.items():
            if name == self.app or name.startswith(self.app + MODEL_APP_SEPARATOR):
                for deployment in status.deployments:
                    if deployment not in RESERVED_NAMES:
                        found[deployment] = name
        return found

    def model(self, name: str) -> "ModelClient":
        """A model's handle; ``KeyError`` naming the models there are when the application has no such model."""
        from ray import serve

        models = self.models()
        if name not in models:
            raise KeyError(f"application '{self.app}' serves no model '{name}'; it serves {sorted(models)}")
        return ModelClient(name, serve.get_deployment_handle(name, app_name=models[name]), self._loop, self.route())


class ModelClient:
    """One model: ``infer`` (blocking) and ``infer_async``, a dict of numpy arrays in and out; ``stream``
    and ``stream_async`` iterate over every response (a decoupled model's zero or more, another's one).
    ``parameters`` are the request's (e.g. a sequence's ``sequence_id``, ``sequence_start``, ``sequence_end``).

    A bad request raises ``deployments.errors.InferenceError`` with the message HTTP clients get (through
    the listener, its code is the one of the HTTP status). ``handle`` is the plain Serve
    ``DeploymentHandle`` for everything else; ``route`` the way to the node's ingress listener, if any.
    """

    def __init__(self, name: str, handle: Any, loop: asyncio.AbstractEventLoop, route: ListenerRoute | None = None):
        self.name = name
        self.handle = handle
        self.route = route
        self._loop = loop

    def infer(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None, version: int | None = None,
              timeout_s: float | None = None, parameters: dict | None = None) -> dict[str, np.ndarray]:
        future = asyncio.run_coroutine_threadsafe(self._call(inputs, outputs, version, parameters), self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the call too (its request leaves the model's queue)
            raise

    async def infer_async(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                          version: int | None = None, parameters: dict | None = None) -> dict[str, np.ndarray]:
        return await self._call(inputs, outputs, version, parameters)

    async def _call(self, inputs, outputs, version, parameters):
        """Through the listener (on the loop this runs on) where it takes the request, else the handle (on
        the client's loop)."""
        request = (self.route.request(self.name, inputs, outputs, version, parameters) if self.route is not None
                   else None)
        if request is not None:
            try:
                return await self.route.send(request)
            except ListenerRefused:
                pass
        call = self._call_handle(inputs, outputs, version, parameters)
        if asyncio.get_running_loop() is self._loop:
            return await call
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self._loop))

    async def _call_handle(self, inputs, outputs, version, parameters):
        return await answer(self.handle.infer.remote(inputs, outputs, version, parameters))

    def stream(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None, version: int | None = None,
               parameters: dict | None = None, timeout_s: float | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Each response as it comes; ``timeout_s`` bounds the wait for each."""
        answers: queue.Queue = queue.Queue()
        asyncio.run_coroutine_threadsafe(self._pump(answers.put, inputs, outputs, version, parameters), self._loop)
        while (answer := answers.get(timeout=timeout_s)) is not _END:
            if isinstance(answer, BaseException):
                raise answer
            yield answer

    async def stream_async(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                           version: int | None = None, parameters: dict | None = None
                           ) -> AsyncIterator[dict[str, np.ndarray]]:
        loop, answers = asyncio.get_running_loop(), asyncio.Queue()
        put = lambda answer: loop.call_soon_threadsafe(answers.put_nowait, answer)  # noqa: E731
        asyncio.run_coroutine_threadsafe(self._pump(put, inputs, outputs, version, parameters), self._loop)
        while (answer := await answers.get()) is not _END:
            if isinstance(answer, BaseException):
                raise answer
            yield answer

    async def _pump(self, put: Callable[[Any], None], inputs, outputs, version, parameters) -> None:
        """Run on the client's loop: hand each response (or the error) to ``put``, then the end."""
        try:
            async for _, answer in self.handle.options(stream=True).infer_stream.remote(inputs, outputs, version,
                                                                                       parameters):
                put(answer)
        except BaseException as exc:
            put(exc)
        finally:
            put(_END)


_END = object()  # the end of a stream of responses
