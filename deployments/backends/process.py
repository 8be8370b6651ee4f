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
import contextlib
import multiprocessing
import socket
import threading
from functools import partial
from pathlib import Path

from deployments.backends import Backend, RequestInfo, Tensors, cancellation
from deployments.backends.channel import LOOP_BYTES, NOTHING, ON_A_THREAD, Channel
from deployments.backends.stub import packed, packed_infos, serve, unpacked
from deployments.config.model_config import ModelConfig
from deployments.errors import ErrorCode, InferenceError

#: Seconds a stub process gets to finalize its model and exit before it is killed.
STOP_GRACE_S = 5.0
#: Seconds a stub process may take to start and load its model before it is killed.
LOAD_TIMEOUT_S = 300.0
#: Where batches from the event loop wait for a stub's lock that a load, an unload or ``execute`` holds.
_LOCK_WAITS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ric-stub-lock")
#: BYTES tensors with more elements than this are not counted one by one: their batch goes to a thread.
COUNTED_ELEMENTS = 1024


def _batch_bytes(requests: list[Tensors], infos: list[RequestInfo] | None) -> int:
    """About the bytes a batch pickles to (LOOP_BYTES + 1 where counting would itself cost: a BYTES tensor
    of many elements), its requests' string parameters included."""
    size = 0
    for request in requests:
        for tensor in request.values():
            if tensor.dtype != object:
                size += tensor.nbytes
            elif tensor.size > COUNTED_ELEMENTS:
                return LOOP_BYTES + 1
            else:
                size += 8 * tensor.size + sum(len(item) for item in tensor.flat if isinstance(item, (bytes, str)))
    for info in infos or ():
        size += sum(len(value) for value in info.parameters.values() if isinstance(value, (bytes, str)))
    return size


class ProcessBackend(Backend):
    """``backend_name``'s backend for one version, run in a stub process (started by ``load``, again by the
    first request after the process died)."""

    def __init__(self, backend_name: str, config: ModelConfig, version_dir: Path, device: str = "cpu"):
        super().__init__(config, version_dir, device)
        self.backend_name = backend_name
        self.name = backend_name
        self._lock = threading.Lock()  # one batch at a time on the pipe
        # Answers are pickled and written here, not on the event loop that finished the call.
        self._answers = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                              thread_name_prefix=f"ric-bls-{config.name}")
        # Where a batch's work that would wait goes (a large batch, the rest of a write, a large read): one
        # batch at a time, so one thread; not the loop's default pool, which others may fill.
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"ric-stub-{config.name}")
        self._unloaded = False  # set at unload: a batch that waited for the lock meanwhile starts no stub
        self._process = None
        self._channel: Channel | None = None
        self._turn: asyncio.Lock | None = None  # batches from the event loop take their turns here
        self._calls_running: set[asyncio.Task] = set()  # BLS calls run on the loop (a task needs a holder)
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
        old, self._channel = self._channel, Channel(parent)  # (made first: the old one's fd is not reused under it)
        if old is not None:
            old.close()
        self._process, self._stopped_because = process, None  # abort() sees it
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
        messages and no thread hand-off. A batch that is large goes through ``execute`` on a worker thread,
        and an answer that is large, or arrives in parts, is read on one (``Channel``)."""
        loop = asyncio.get_running_loop()
        if self._turn is None:
            self._turn = asyncio.Lock()
        async with self._turn:  # one batch at a time (the threading lock: against load, unload, execute)
            await self._acquire(loop)
            on_the_thread = False
            try:
                if (_batch_bytes(requests, infos) > LOOP_BYTES or self._process is None
                        or not self._process.is_alive() or self._unloaded):
                    on_the_thread = True  # which gives the lock back when done, even if this caller is not
                    return await asyncio.shield(loop.run_in_executor(self._io, self._exchange_and_release,
                                                                     requests, infos))
                channel = self._channel
                try:
                    await self._send_batch_async(channel, requests, infos, loop)
                    while (message := await self._next_message(channel, loop))[0] == "call":
                        self._dispatch(channel, message, loop)
                except (EOFError, OSError):
                    raise await loop.run_in_executor(self._io, self._exited) from None
                except asyncio.CancelledError:  # its answer would be taken for the next batch's: a fresh stub
                    self._end("was stopped: the replica gave up on the batch in it")
                    raise
            finally:
                if not on_the_thread:
                    self._lock.release()
        return self._answered(message)

    async def _acquire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The threading lock, waited for on a thread when a load, an unload or ``execute`` holds it; taken
        there after this caller was cancelled, it is given back."""
        if self._lock.acquire(blocking=False):
            return
        taking = _LOCK_WAITS.submit(self._lock.acquire)
        try:
            await asyncio.wrap_future(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(lambda done: done.cancelled() or self._lock.release())
            raise

    def _exchange_and_release(self, requests: list[Tensors], infos: list[RequestInfo] | None
                              ) -> list[Tensors | Exception]:
        try:
            return self._exchange(requests, infos)
        finally:
            self._lock.release()

    def _exchange(self, requests: list[Tensors], infos: list[RequestInfo] | None) -> list[Tensors | Exception]:
        """One batch down the pipe and its answer back, on this thread (the lock held)."""
        if self._unloaded:
            raise InferenceError(ErrorCode.UNAVAILABLE, f"model '{self.config.name}': this version was unloaded")
        if self._process is None or not self._process.is_alive():
            self._start()
        try:
            for message in self._batch_messages(requests, infos):
                self._channel.send(message)
            message = self._receive()
        except (EOFError, OSError):
            raise self._exited() from None
        return self._answered(message)

    @staticmethod
    def _batch_messages(requests: list[Tensors], infos: list[RequestInfo] | None) -> list[tuple]:
        """The batch, then a cancel for each of its requests whose caller has gone already (a cancel sent
        before the batch was not kept in the stub)."""
        return [("execute", [packed(r) for r in requests], packed_infos(infos, len(requests))),
                *(("cancel", info.token) for info in infos or () if cancellation.is_cancelled(info.token))]

    async def _send_batch_async(self, channel: Channel, requests: list[Tensors], infos: list[RequestInfo] | None,
                                loop: asyncio.AbstractEventLoop) -> None:
        for message in self._batch_messages(requests, infos):
            await channel.send_async(message, loop, self._io)

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

    async def _next_message(self, channel: Channel, loop: asyncio.AbstractEventLoop):
        """The stub's next message, waited for on the loop; read there when it is small and here whole, else
        on a worker thread."""
        while (message := channel.receive_now()) is NOTHING:
            ready = loop.create_future()
            loop.add_reader(channel.fileno(), lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(channel.fileno())
        if message is ON_A_THREAD:
            return await loop.run_in_executor(self._io, channel.receive)
        return message

    def _receive(self):
        """The stub's next message that is not a BLS call, each call dispatched meanwhile."""
        while (message := self._channel.receive())[0] == "call":
            self._dispatch(self._channel, message)
        return message

    def _dispatch(self, channel: Channel, message, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Hand the stub's BLS call to ``calls`` (run on ``loop`` when called from it) and send its answer down
        when it comes: calls run at once (``async_exec`` gathers them)."""
        _, number, call, one_by_one = message
        each = partial(self._part, channel, number) if one_by_one else None
        try:
            if self.calls is None:
                raise InferenceError(ErrorCode.UNAVAILABLE, "this replica offers no calls to other models")
            if loop is not None:
                running = loop.create_task(self.calls.run(call, each))
                self._calls_running.add(running)
                running.add_done_callback(self._calls_running.discard)
            else:
                running = self.calls.submit(call, each)
            running.add_done_callback(partial(self._answer, channel, number))
        except Exception as exc:
            self._write(channel, ("called", number, [InferenceError.from_exception(exc)]))

    def _answer(self, channel: Channel, number: int, future: concurrent.futures.Future) -> None:
        """Send a call's answer down (on the sender thread); a call that failed or was cancelled answers its
        error, so the model's ``exec()`` never waits for nothing."""
        try:
            answer = future.result()
        except BaseException as exc:  # noqa: BLE001 (cancelled with the replica's loop, too)
            answer = [InferenceError.from_exception(exc)]
        self._write(channel, ("called", number, answer))

    def _part(self, channel: Channel, number: int, response) -> None:
        """One response of a call answered one by one, sent down before the call's end (one sender thread)."""
        self._write(channel, ("part", number, response))

    def _write(self, channel: Channel, message) -> None:
        """``message`` down the pipe on the sender thread, never on the event loop."""
        try:
            self._answers.submit(self._send_answer, channel, message)
        except RuntimeError:  # unloaded meanwhile
            pass

    def _send_answer(self, channel: Channel, message) -> None:
        try:
            channel.send(message)
        except (OSError, ValueError):  # the stub went away meanwhile
            pass
        except Exception as exc:  # noqa: BLE001 (an answer that does not pickle: the call still ends)
            if message[0] == "called":
                self._send_answer(channel, ("called", message[1], [InferenceError(
                    ErrorCode.INTERNAL, f"the answer could not be sent: {type(exc).__name__}: {exc}")]))

    def custom_metrics(self) -> dict:
        return self._metrics

    def cancel(self, token: int) -> None:
        """Mark the request here and in the stub (where a request not running is not marked)."""
        super().cancel(token)
        channel = self._channel
        if channel is not None and self._process is not None:
            self._write(channel, ("cancel", token))

    def abort(self, why: str) -> bool:
        """End the stub process now (a batch wedged in it), from any thread: the batch fails, the next
        request starts a fresh process. Whether there was one to end. The pipe is shut too: a child the
        model forked may hold the stub's end, and the batch's read must still end."""
        process, channel = self._process, self._channel
        if process is None or not process.is_alive():
            return False
        self._stopped_because = why
        process.kill()
        if channel is not None:
            with contextlib.suppress(OSError):
                channel.sock.shutdown(socket.SHUT_RDWR)
        return True

    def _end(self, why: str) -> None:
        """``abort``, and the stub forgotten at once (a killed process reads as alive until it is reaped):
        the next batch starts a fresh one."""
        process = self._process
        if self.abort(why):
            self._process = None
            threading.Thread(target=process.join, name=f"ric-reap-{self.config.name}", daemon=True).start()

    def unload(self) -> None:
        """End the stub process, its model's finalize first. Called on an event loop (a retired version's
        last batch ran there), it ends on a thread of its own: a stub's exit never holds the loop."""
        self._unloaded = True
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._unload()
            return
        threading.Thread(target=self._unload, name=f"ric-unload-{self.config.name}", daemon=True).start()

    def _unload(self) -> None:
        with self._lock:
            process, channel, self._process, self._channel = self._process, self._channel, None, None
            self._answers.shutdown(wait=False)  # (an answer queued still goes: shutdown runs what it holds)
            self._io.shutdown(wait=False)
            if channel is None:
                return
            try:
                if process is not None:
                    channel.send(("unload",))
                    while channel.connection.poll(STOP_GRACE_S):  # until finalize() ran; its calls are refused
                        message = channel.receive()
                        if message[0] != "call":
                            break
                        channel.send(("called", message[1], [InferenceError(
                            ErrorCode.UNAVAILABLE, "the model is unloading: its calls are not served")]))
            except (EOFError, OSError):
                pass
            if process is not None:
                process.join(STOP_GRACE_S)
                if process.is_alive():
                    process.kill()
                    process.join(STOP_GRACE_S)
            channel.close()
