"""A backend run in a process of its own: how a Python model runs inside an ingress replica without its code
sharing the replica's process (Triton runs each Python model instance in a stub process too).

The parent keeps the Backend interface; each ``execute`` sends the batch's requests down a pipe and waits for
the results (the stub's side, and how tensors travel: deployments/backends/stub.py). A model whose code
kills its process (a crash, an ``os._exit``, the OOM killer) fails the requests it held, with UNAVAILABLE
naming the exit, and nothing else: the ingress and every other model serve on, and the model's next request
starts a fresh process. The model's BLS calls (``InferenceRequest.exec()``) come up the same pipe while its
batch runs: the parent hands each to ``calls`` (deployments/serving/bls.py) and sends the answer down when
it comes, so calls gathered with ``async_exec`` run at once; a decoupled callee's responses come down as
``part`` messages before the call's answer. A request whose caller has gone is marked down the pipe
(``cancel``), and the stub sends a snapshot of the model's own metrics with a batch's answer when they
changed. Decoupled models (zero or more responses, sent from any thread of the model's) are not run this way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import socket
import struct
import threading
from functools import partial
from pathlib import Path

from deployments.backends import Backend, RequestInfo, Tensors, cancellation
from deployments.backends.stub import packed, packed_infos, send, serve, unpacked
from deployments.config.model_config import ModelConfig
from deployments.errors import ErrorCode, InferenceError

#: Seconds a stub process gets to finalize its model and exit before it is killed.
STOP_GRACE_S = 5.0
#: Seconds a stub process may take to start and load its model before it is killed.
LOAD_TIMEOUT_S = 300.0
#: Batches and answers up to this size are written and read on the replica's event loop; larger ones on a
#: worker thread (``ProcessBackend.execute_async``).
LOOP_BYTES = 256 * 1024
#: The length before each message on the pipe (multiprocessing's framing; -1: a longer length follows).
_HEADER = struct.Struct("!i")


def _tensor_bytes(requests: list[Tensors]) -> int:
    """About the bytes of a batch's tensors (a BYTES tensor's elements counted by their lengths)."""
    return sum(sum(len(item) for item in tensor.flat if isinstance(item, bytes)) if tensor.dtype == object
               else tensor.nbytes for request in requests for tensor in request.values())


class ProcessBackend(Backend):
    """``backend_name``'s backend for one version, run in a stub process (started by ``load``, again by the
    first request after the process died)."""

    def __init__(self, backend_name: str, config: ModelConfig, version_dir: Path, device: str = "cpu"):
        super().__init__(config, version_dir, device)
        self.backend_name = backend_name
        self.name = backend_name
        self._lock = threading.Lock()  # one batch at a time on the pipe
        self._send_lock = threading.Lock()  # the batch and the answers to its BLS calls share the pipe
        # Answers are pickled and written here, not on the event loop that finished the call.
        self._answers = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                              thread_name_prefix=f"ric-bls-{config.name}")
        self._process = None
        self._connection = None
        self._peer: socket.socket | None = None
        self._turn: asyncio.Lock | None = None  # batches from the event loop take their turns here
        self._stopped_because: str | None = None  # why abort() ended the process, for the request in it
        self._metrics: dict = {}  # the stub's latest snapshot of the model's own metrics

    def load(self) -> None:
        with self._lock:
            self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with Ray's threads in it
        parent, child = context.Pipe()
        process = context.Process(target=serve, name=f"ric-stub-{self.config.name}", daemon=True,
                                  args=(child, self.backend_name, self.config, str(self.version_dir), self.device))
        process.start()
        child.close()
        if self._peer is not None:
            self._peer.close()
        self._peer = socket.socket(fileno=os.dup(parent.fileno()))  # the same socket, to peek at a message's size
        self._process, self._connection, self._stopped_because = process, parent, None  # abort() sees it
        try:
            if not parent.poll(LOAD_TIMEOUT_S):
                process.kill()
            kind, value, *metrics = self._receive()
        except (EOFError, OSError):
            process.join(STOP_GRACE_S)
            self._process = None
            raise InferenceError(ErrorCode.UNAVAILABLE, f"model '{self.config.name}': its stub process exited "
                                 f"while loading (exit code {process.exitcode})") from None
        if kind == "failed":
            process.join(STOP_GRACE_S)
            self._process = None
            raise value
        self.config, self._metrics = value, metrics[0]

    def infer(self, inputs: Tensors) -> Tensors:  # every batch goes through execute
        (result,) = self.execute([inputs])
        if isinstance(result, Exception):
            raise result
        return result

    def execute(self, requests: list[Tensors], infos: list[RequestInfo] | None = None) -> list[Tensors | Exception]:
        with self._lock:
            return self._exchange(requests, infos)

    async def execute_async(self, requests: list[Tensors], infos: list[RequestInfo] | None = None
                            ) -> list[Tensors | Exception]:
        """``execute`` from the replica's event loop, with no thread in between: the batch is written and its
        answer read on the loop (the stub's BLS calls dispatched there meanwhile), so a small batch costs two
        messages and no thread hand-off. A batch whose tensors are large goes through ``execute`` on a
        worker thread, and so does an answer that is: their copies do not hold the loop."""
        loop = asyncio.get_running_loop()
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:  # one batch at a time (the threading lock: against load, unload, execute)
            if not self._lock.acquire(blocking=False):
                await loop.run_in_executor(None, self._lock.acquire)
            try:
                if _tensor_bytes(requests) > LOOP_BYTES or self._process is None or not self._process.is_alive():
                    return await loop.run_in_executor(None, self._exchange, requests, infos)
                try:
                    self._send_batch(requests, infos)
                    while True:
                        message = await self._next_message(loop)
                        if message[0] != "call":
                            break
                        self._dispatch(self._connection, message, loop)
                except (EOFError, OSError):
                    raise self._exited() from None
            finally:
                self._lock.release()
        return self._answered(message)

    def _exchange(self, requests: list[Tensors], infos: list[RequestInfo] | None) -> list[Tensors | Exception]:
        """One batch down the pipe and its answer back, on this thread (the lock held)."""
        if self._process is None or not self._process.is_alive():
            self._start()
        try:
            self._send_batch(requests, infos)
            message = self._receive()
        except (EOFError, OSError):
            raise self._exited() from None
        return self._answered(message)

    def _send_batch(self, requests: list[Tensors], infos: list[RequestInfo] | None) -> None:
        self._send(self._connection, ("execute", [packed(r) for r in requests], packed_infos(infos, len(requests))))
        for info in infos or ():  # a cancel sent before the batch was not kept there: again
            if cancellation.is_cancelled(info.token):
                self._send(self._connection, ("cancel", info.token))

    def _answered(self, message) -> list[Tensors | Exception]:
        kind, value, metrics = message
        if metrics is not None:
            self._metrics = metrics
        if kind == "error":
            raise value
        return [unpacked(r) if isinstance(r, tuple) else r for r in value]

    def _exited(self) -> InferenceError:
        """The stub process ended with a batch in it: the error for the batch's requests."""
        self._process.join(STOP_GRACE_S)
        code, self._process = self._process.exitcode, None
        why, self._stopped_because = self._stopped_because, None
        return InferenceError(ErrorCode.UNAVAILABLE, f"model '{self.config.name}': its stub process "
                              f"{why or f'exited (exit code {code})'} with this request in it; the next request "
                              "starts it again")

    async def _next_message(self, loop: asyncio.AbstractEventLoop):
        """The stub's next message, waited for on the loop; a large one is read on a worker thread."""
        connection, ready = self._connection, loop.create_future()
        loop.add_reader(connection.fileno(), lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(connection.fileno())
            os.set_blocking(connection.fileno(), True)  # uvloop made it non-blocking; the reads below wait
        header = self._peer.recv(_HEADER.size, socket.MSG_PEEK)
        if len(header) == _HEADER.size and not 0 <= _HEADER.unpack(header)[0] <= LOOP_BYTES:
            return await loop.run_in_executor(None, connection.recv)
        return connection.recv()  # a short read (a header split in two) waits for the rest here

    def _send(self, connection, message) -> None:
        with self._send_lock:
            send(connection, message)

    def _receive(self):
        """The stub's next message that is not a BLS call, each call dispatched meanwhile."""
        while (message := self._connection.recv())[0] == "call":
            self._dispatch(self._connection, message)
        return message

    def _dispatch(self, connection, message, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Hand the stub's BLS call to ``calls`` (run on ``loop`` when called from it) and send its answer down
        when it comes: calls run at once (``async_exec`` gathers them)."""
        _, number, call, one_by_one = message
        each = partial(self._part, connection, number) if one_by_one else None
        try:
            if self.calls is None:
                raise InferenceError(ErrorCode.UNAVAILABLE, "this replica offers no calls to other models")
            running = (loop.create_task(self.calls.run(call, each)) if loop is not None
                       else self.calls.submit(call, each))
            running.add_done_callback(partial(self._answer, connection, number))
        except Exception as exc:
            self._send(connection, ("called", number, [InferenceError.from_exception(exc)]))

    def _answer(self, connection, number: int, future: concurrent.futures.Future) -> None:
        """Send a call's answer down (on the thread that finished it); a call that failed or was cancelled
        answers its error, so the model's ``exec()`` never waits for nothing."""
        try:
            answer = future.result()
        except BaseException as exc:  # noqa: BLE001 (cancelled with the replica's loop, too)
            answer = [InferenceError.from_exception(exc)]
        try:
            self._answers.submit(self._send_answer, connection, ("called", number, answer))
        except RuntimeError:  # unloaded meanwhile
            pass

    def _part(self, connection, number: int, response) -> None:
        """One response of a call answered one by one, sent down before the call's end (one sender thread)."""
        try:
            self._answers.submit(self._send_answer, connection, ("part", number, response))
        except RuntimeError:  # unloaded meanwhile
            pass

    def _send_answer(self, connection, message) -> None:
        try:
            self._send(connection, message)
        except (OSError, ValueError):  # the stub went away meanwhile
            pass
        except Exception as exc:  # noqa: BLE001 (an answer that does not pickle: the call still ends)
            if message[0] == "called":
                self._send_answer(connection, ("called", message[1], [InferenceError(
                    ErrorCode.INTERNAL, f"the answer could not be sent: {type(exc).__name__}: {exc}")]))

    def custom_metrics(self) -> dict:
        return self._metrics

    def cancel(self, token: int) -> None:
        """Mark the request here and in the stub (where a request not running is not marked)."""
        super().cancel(token)
        connection = self._connection
        if connection is not None and self._process is not None:
            try:  # written off the event loop (a batch being sent holds the pipe)
                self._answers.submit(self._send_answer, connection, ("cancel", token))
            except RuntimeError:  # unloaded meanwhile
                pass

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
            if self._peer is not None:
                self._peer.close()
                self._peer = None
            if process is None:
                return
            try:
                self._send(connection, ("unload",))
                while connection.poll(STOP_GRACE_S):  # until finalize() ran; its calls are refused
                    message = connection.recv()
                    if message[0] != "call":
                        break
                    self._send(connection, ("called", message[1], [InferenceError(
                        ErrorCode.UNAVAILABLE, "the model is unloading: its calls are not served")]))
            except (EOFError, OSError):
                pass
            process.join(STOP_GRACE_S)
            if process.is_alive():
                process.kill()
                process.join(STOP_GRACE_S)
            connection.close()
