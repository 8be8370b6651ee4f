"""The replica's end of a stub process's pipe (deployments/backends/process.py): a socket pair carrying
multiprocessing's framing (a 4-byte big-endian length, or -1 and an 8-byte one, then the pickle), which the
stub reads and writes with a plain multiprocessing Connection.

The replica's side does its own reads and writes because it uses the socket from two places: worker
threads (loads, unloads, large batches, the answers to the model's BLS calls) and the event loop (small
batches). uvloop leaves a socket it watched non-blocking, so nothing here depends on the socket's mode:
a thread waits with ``poll`` when the socket would block; the loop takes a message only once it has
arrived whole and is small (``receive_now``), and writes what the socket takes at once, the rest on the
backend's I/O thread (``send_async``), so a stub that stops reading or writing midway never holds the
loop. One lock keeps each message's bytes together, whichever thread writes it.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import select
import socket
import struct
import threading
from concurrent.futures import Executor

#: Messages up to this size are read and written on the replica's event loop; larger ones on a worker
#: thread. Below a socket pair's buffer (~208 KiB on Linux), so a message this size can be there whole.
LOOP_BYTES = 64 * 1024
_LENGTH = struct.Struct("!i")
_LONG_LENGTH = struct.Struct("!Q")
#: What ``receive_now`` answers when no message has begun to arrive, or one that must be read on a thread
#: (it is large, or only part of it is there).
NOTHING, ON_A_THREAD = object(), object()
_NOW = int(socket.MSG_DONTWAIT)  # (plain ints: combining socket's flag enums costs microseconds a call)
_PEEK_NOW = int(socket.MSG_PEEK) | _NOW


def framed(message) -> tuple[bytes, bytes]:
    """A message's length prefix and its pickle (protocol 5: buffers in band)."""
    data = pickle.dumps(message, protocol=5)
    length = _LENGTH.pack(len(data)) if len(data) <= 0x7FFFFFFF else _LENGTH.pack(-1) + _LONG_LENGTH.pack(len(data))
    return length, data


class Channel:
    """The replica's end of one stub process's pipe (a multiprocessing Connection, kept for ``poll``)."""

    def __init__(self, connection):
        self.connection = connection
        self.sock = socket.socket(fileno=os.dup(connection.fileno()))  # the same socket: its flags are shared
        self.sock.settimeout(None)
        self.lock = threading.Lock()  # one message's bytes at a time
        self._peeked = bytearray(_LENGTH.size + LOOP_BYTES)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message) -> None:
        """Write one message, waiting while the socket is full (from a thread)."""
        length, data = framed(message)
        with self.lock:
            self._write(length)
            self._write(data)

    async def send_async(self, message, loop: asyncio.AbstractEventLoop, thread: Executor) -> None:
        """Write one small message from the event loop: what the socket takes now, the rest on ``thread``
        (shielded: a message begun is always finished, and the lock given back)."""
        length, data = framed(message)
        frame = length + data
        if not self.lock.acquire(blocking=False):  # a thread is writing: this one waits its turn there
            await asyncio.shield(loop.run_in_executor(thread, self._send_frame, frame))
            return
        try:
            sent = self.sock.send(frame, _NOW)
        except BlockingIOError:
            sent = 0
        except BaseException:
            self.lock.release()
            raise
        if sent == len(frame):
            self.lock.release()
            return
        await asyncio.shield(loop.run_in_executor(thread, self._finish, memoryview(frame)[sent:]))

    def _send_frame(self, frame: bytes) -> None:
        with self.lock:
            self._write(frame)

    def _finish(self, rest: memoryview) -> None:
        try:
            self._write(rest)
        finally:
            self.lock.release()

    def _write(self, data) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                self._wait(select.POLLOUT)

    def receive(self):
        """The next message, waiting for it (from a thread); EOFError once the stub's end closed."""
        (length,) = _LENGTH.unpack(self._read(_LENGTH.size))
        if length == -1:
            (length,) = _LONG_LENGTH.unpack(self._read(_LONG_LENGTH.size))
        return pickle.loads(self._read(length))

    def _read(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            try:
                count = self.sock.recv_into(view[got:])
            except BlockingIOError:
                self._wait(select.POLLIN)
                continue
            if count == 0:
                raise EOFError("the stub's end of the pipe closed")
            got += count
        return buffer

    def _wait(self, event: int) -> None:
        """Until the socket is readable or writable (poll: select cannot watch a descriptor past 1023)."""
        waiting = select.poll()
        waiting.register(self.sock, event)
        waiting.poll()

    def receive_now(self):
        """The next message if it is here whole and small (read on the caller's thread, never waiting);
        else NOTHING (none has begun to arrive) or ON_A_THREAD. EOFError once the stub's end closed."""
        try:
            got = self.sock.recv_into(self._peeked, len(self._peeked), _PEEK_NOW)
        except BlockingIOError:
            return NOTHING
        if got == 0:
            raise EOFError("the stub's end of the pipe closed")
        if got < _LENGTH.size:
            return ON_A_THREAD
        (length,) = _LENGTH.unpack_from(self._peeked)
        if not 0 <= length <= LOOP_BYTES or got < _LENGTH.size + length:
            return ON_A_THREAD
        self.sock.recv_into(self._peeked, _LENGTH.size + length, _NOW)
        return pickle.loads(memoryview(self._peeked)[_LENGTH.size:_LENGTH.size + length])

    def close(self) -> None:
        self.sock.close()
        self.connection.close()
