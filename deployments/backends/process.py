"""A backend run in a process of its own: how a Python model runs inside an ingress replica without its code
sharing the replica's process (Triton runs each Python model instance in a stub process too).

The parent keeps the Backend interface; each ``execute`` sends the batch's requests down a pipe and waits for
the results (numpy arrays travel pickled, protocol 5). A model whose code kills its process (a crash, an
``os._exit``, the OOM killer) fails the requests it held, with UNAVAILABLE naming the exit, and nothing
else: the ingress and every other model serve on, and the model's next request starts a fresh process.
Decoupled models (zero or more responses, sent from any thread of the model's) are not run this way.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import pickle
import signal
import sys
import threading
import traceback
from pathlib import Path

from deployments.backends import Backend, Tensors, backend_class
from deployments.config.model_config import ModelConfig
from deployments.errors import ErrorCode, InferenceError

#: Seconds a stub process gets to finalize its model and exit before it is killed.
STOP_GRACE_S = 5.0
#: Seconds a stub process may take to start and load its model before it is killed.
LOAD_TIMEOUT_S = 300.0


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


def _serve(connection, backend_name: str, config: ModelConfig, version_dir: str, device: str) -> None:
    """The stub process: load the backend, then answer ``("execute", requests, parameters)`` until
    ``("unload",)`` or the pipe closes. It ends with the replica that started it, however that ends."""
    _end_with_parent()
    backend = backend_class(backend_name)(config, Path(version_dir), device)
    try:
        backend.load()
    except Exception as exc:
        connection.send(("failed", _portable(exc)))
        return
    connection.send(("loaded", backend.config))
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the parent went away
            break
        if message[0] == "unload":
            break
        _, requests, parameters = message
        try:
            results = backend.execute(requests, parameters)
            connection.send(("done", [_portable(r) if isinstance(r, Exception) else r for r in results]))
        except Exception as exc:
            connection.send(("error", _portable(exc)))
    backend.unload()
    try:
        connection.send(("unloaded",))
    except OSError:  # the parent went away meanwhile
        pass


def _end_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux), even one wedged in the model's code:
    a replica killed by Ray or the OOM killer runs no cleanup of its own."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ProcessBackend(Backend):
    """``backend_name``'s backend for one version, run in a stub process (started by ``load``, again by the
    first request after the process died)."""

    def __init__(self, backend_name: str, config: ModelConfig, version_dir: Path, device: str = "cpu"):
        super().__init__(config, version_dir, device)
        self.backend_name = backend_name
        self.name = backend_name
        self._lock = threading.Lock()  # one batch at a time on the pipe
        self._process = None
        self._connection = None
        self._stopped_because: str | None = None  # why abort() ended the process, for the request in it

    def load(self) -> None:
        with self._lock:
            self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with Ray's threads in it
        parent, child = context.Pipe()
        process = context.Process(target=_serve, name=f"ric-stub-{self.config.name}", daemon=True,
                                  args=(child, self.backend_name, self.config, str(self.version_dir), self.device))
        process.start()
        child.close()
        self._process, self._connection, self._stopped_because = process, parent, None  # abort() sees it
        try:
            if not parent.poll(LOAD_TIMEOUT_S):
                process.kill()
            kind, value = parent.recv()
        except (EOFError, OSError):
            process.join(STOP_GRACE_S)
            self._process = None
            raise InferenceError(ErrorCode.UNAVAILABLE, f"model '{self.config.name}': its stub process exited "
                                 f"while loading (exit code {process.exitcode})") from None
        if kind == "failed":
            process.join(STOP_GRACE_S)
            self._process = None
            raise value
        self.config = value

    def infer(self, inputs: Tensors) -> Tensors:  # every batch goes through execute
        (result,) = self.execute([inputs])
        if isinstance(result, Exception):
            raise result
        return result

    def execute(self, requests: list[Tensors], parameters: list[dict] | None = None) -> list[Tensors | Exception]:
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._start()
            try:
                self._connection.send(("execute", requests, parameters))
                kind, value = self._connection.recv()
            except (EOFError, OSError):
                self._process.join(STOP_GRACE_S)
                code, self._process = self._process.exitcode, None
                why, self._stopped_because = self._stopped_because, None
                raise InferenceError(ErrorCode.UNAVAILABLE, f"model '{self.config.name}': its stub process "
                                     f"{why or f'exited (exit code {code})'} with this request in it; the "
                                     "next request starts it again") from None
        if kind == "error":
            raise value
        return value

    def abort(self, why: str) -> bool:
        """End the stub process now (a batch wedged in it), from any thread: the batch fails, the next
        request starts a fresh process. Whether there was one to end."""
        process = self._process
        if process is None or not process.is_alive():
            return False
        self._stopped_because = why
        process.kill()
        return True

    def unload(self) -> None:
        with self._lock:
            process, connection, self._process = self._process, self._connection, None
            if process is None:
                return
            try:
                connection.send(("unload",))
                if connection.poll(STOP_GRACE_S):
                    connection.recv()  # finalize() ran
            except (EOFError, OSError):
                pass
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join(STOP_GRACE_S)
            connection.close()
