"""Payload logging: a sampled share of a model's requests, with their answers, written as JSON lines to a
folder or ``s3://`` (boto3), off the request path.

A sampled request is queued as it finishes (its tensors copied: a client may reuse shared memory once it has
its answer); one writer thread per model and replica takes the queue in batches and writes each batch as a
file of its own, cut at ``MAX_FILE_BYTES``, at half the queue's bound, or ``MAX_FILE_S`` after its first
record, whichever comes first (``<model>/<yyyy-mm-dd>/<time>-<replica>-<n>.jsonl``; a folder's files appear
whole, by rename). A batch is taken off only once it is written: a sink that fails is retried with
backoff, meanwhile requests fill the queue until the records held (queued, and in the file being written)
reach the config's ``queue_size`` (default 10,000); those past it are dropped and counted, and inference
never waits. What was accepted is written at least once (a retried write that had in fact landed writes
it twice); a replica that dies loses what it held: at most ``queue_size`` records.

Each line: ``id`` (the client's request id), ``model``, ``version``, ``time`` (seconds since the epoch, when
the request arrived), ``latency_ms``, ``status`` ("OK" or the error code) and ``error``, ``replica``, and
``inputs`` / ``outputs``: per tensor ``datatype``, ``shape`` and ``data`` (row-major values; BYTES as text),
or ``sha256`` for a tensor over the config's ``digest_over_bytes``, or ``redacted: true``. pandas reads the
files with ``pandas.read_json(path, lines=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np
import orjson

from deployments.backends import Tensors
from deployments.config.dtypes import v2_datatype
from deployments.config.operations import PayloadLog
from deployments.observability.statistics import PayloadStatistics
from deployments.private_files import private_folder

logger = logging.getLogger(__name__)

#: A file is cut at this many bytes of lines, or this long after its first record.
MAX_FILE_BYTES = 4 << 20
MAX_FILE_S = 5.0
#: The longest wait between two tries of a write that failed.
MAX_BACKOFF_S = 10.0


class Sink(Protocol):
    def write(self, name: str, data: bytes) -> None: ...


class FolderSink:
    """Files under a local folder, each written under a temporary name and renamed into place. The folder is
    the server's own (``private_folder``: created 0700, refused as a link, another user's or open to others,
    checked at the first write): the records are the clients' requests and answers, and a folder another
    local user could write in would let them read the files or move them elsewhere."""

    def __init__(self, root: str):
        self.root = Path(root)
        self._checked = False

    def write(self, name: str, data: bytes) -> None:
        if not self._checked:
            private_folder(self.root)  # UnsafeFolder (a ValueError) names the folder and why
            self._checked = True
        path = self.root / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".writing-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class S3Sink:
    """Objects under ``s3://bucket/prefix`` (boto3 takes its settings the usual way, as the S3 store's)."""

    def __init__(self, uri: str):
        parsed = urlparse(uri)
        self.bucket, self.prefix = parsed.netloc, parsed.path.strip("/")
        self._client = None

    def write(self, name: str, data: bytes) -> None:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", config=Config(connect_timeout=3, read_timeout=10,
                                                            retries={"mode": "standard", "max_attempts": 2}))
        self._client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}".lstrip("/"), Body=data)


def sink_for(destination: str) -> Sink:
    """The sink of a destination: ``s3://bucket/prefix`` or a folder."""
    if destination.startswith("s3://"):
        if not urlparse(destination).netloc:
            raise ValueError(f"{destination!r} is not an s3://bucket/prefix address")
        return S3Sink(destination)
    return FolderSink(destination)


@dataclass
class _Record:
    version: int
    request_id: str
    arrived_s: float
    latency_ns: int
    status: str
    error: str
    inputs: Tensors
    outputs: Tensors
    settings: PayloadLog = field(repr=False, default=None)
    nbytes: int = 0  # its tensors' bytes, held until written


class PayloadWriter:
    """The payload log of one model in one replica: ``offer`` on the request path, a thread that writes."""

    def __init__(self, model: str, replica: str, sink: Sink):
        self.model, self.replica, self.sink = model, replica, sink
        self._queue: queue.Queue[_Record | None] = queue.Queue()
        # Records queued or in the file being written, and their tensors' bytes (at most the settings'
        # queue_size and queue_bytes).
        self._held, self._held_bytes = 0, 0
        self._counts: dict[int, PayloadStatistics] = {}
        self._lock = threading.Lock()
        self._files = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._write_forever, name=f"ric-payloads-{model}", daemon=True)
        self._thread.start()

    def offer(self, settings: PayloadLog, version: int, request_id: str, arrived_s: float, latency_ns: int,
              inputs: Tensors, outputs: Tensors | None, error: Exception | None = None) -> None:
        """Log one finished request if it is sampled; never blocks (a full queue drops it, counted)."""
        if not settings.sample_rate or random.random() >= settings.sample_rate:
            return
        status = "OK" if error is None else getattr(getattr(error, "code", None), "name", type(error).__name__)
        inputs, outputs = _kept(inputs, settings), _kept(outputs, settings)
        size = sum(_nbytes(a) for a in (*inputs.values(), *outputs.values()))
        with self._lock:
            counts = self._counts.setdefault(version, PayloadStatistics())
            if self._stopped.is_set() or self._held >= settings.queue_size or (
                    self._held and self._held_bytes + size > settings.queue_bytes):
                counts.dropped += 1
                return
            counts.logged += 1
            self._held += 1
            self._held_bytes += size
        copied = lambda tensors: {n: a if _stand_in(a) else np.array(a, copy=True)  # noqa: E731
                                  for n, a in tensors.items()}
        self._queue.put_nowait(_Record(version, request_id, arrived_s, latency_ns, status,
                                       "" if error is None else str(error), copied(inputs), copied(outputs),
                                       settings, size))

    def counts(self) -> dict[int, PayloadStatistics]:
        """Per version: records logged (accepted), written, dropped (not accepted), lost (accepted, never
        written: no JSON could hold it, or the sink still failed as the replica stopped); a copy."""
        with self._lock:
            return {v: PayloadStatistics(c.logged, c.written, c.dropped, c.lost) for v, c in self._counts.items()}

    def stop(self, wait_s: float = 5.0) -> None:
        """Write what is held (a few tries, within ``wait_s``), then end the writer."""
        self._stopped.set()
        self._queue.put(None)  # (wakes the writer from its wait for the next record)
        self._thread.join(wait_s)

    def _write_forever(self) -> None:
        while True:
            batch, size, deadline, most = [], 0, None, 1 << 62
            # A file is cut early at half the queue's bound, so a healthy sink never fills the queue.
            while size < MAX_FILE_BYTES and len(batch) < most:
                if self._stopped.is_set():  # stopping: everything queued goes into this last file
                    timeout = 0.0
                elif (timeout := 0.5 if deadline is None else deadline - time.monotonic()) <= 0:
                    break
                try:
                    record = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
                except queue.Empty:
                    if self._stopped.is_set():
                        break
                    continue
                if record is None:  # stop() woke it
                    continue
                deadline = deadline or time.monotonic() + MAX_FILE_S
                most = max(1, record.settings.queue_size // 2) if not self._stopped.is_set() else 1 << 62
                line = self._serialised(record)
                if line is not None:
                    batch.append((record, line))
                    size += len(line)
            if batch:
                self._write(batch)
            if self._stopped.is_set() and self._queue.empty():
                return

    def _serialised(self, record: _Record) -> bytes | None:
        try:
            return orjson.dumps(self._line(record), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        except Exception as exc:  # a tensor no line can hold: that record is dropped, counted, the writer goes on
            logger.warning("model '%s': a payload record cannot be written as JSON: %r", self.model, exc)
            self._done([record], "lost")
            return None

    def _write(self, batch: list[tuple[_Record, bytes]]) -> None:
        """Write one file, trying until it is written (stopping: a few tries, then what it held is lost)."""
        self._files += 1
        now = time.time()
        name = (f"{self.model}/{time.strftime('%Y-%m-%d', time.gmtime(now))}/"
                f"{time.strftime('%H%M%S', time.gmtime(now))}-{self.replica}-{self._files}.jsonl")
        data, backoff, tries = b"".join(line for _, line in batch), 0.5, 0
        while True:
            try:
                self.sink.write(name, data)
                break
            except Exception as exc:
                tries += 1
                logger.warning("model '%s': payload log write of %d records failed (trying again in %.1f s): %r",
                               self.model, len(batch), backoff, exc)
                if self._stopped.is_set() and tries >= 3:
                    self._done([record for record, _ in batch], "lost")
                    return
                time.sleep(backoff) if self._stopped.is_set() else self._stopped.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
        self._done([record for record, _ in batch], "written")

    def _done(self, records: list[_Record], outcome: str) -> None:
        with self._lock:
            for record in records:
                counts = self._counts.setdefault(record.version, PayloadStatistics())
                setattr(counts, outcome, getattr(counts, outcome) + 1)
            self._held -= len(records)
            self._held_bytes -= sum(record.nbytes for record in records)

    def _line(self, record: _Record) -> dict[str, Any]:
        settings = record.settings
        return {"id": record.request_id, "model": self.model, "version": record.version, "time": record.arrived_s,
                "latency_ms": round(record.latency_ns / 1e6, 3), "status": record.status, "error": record.error,
                "replica": self.replica,
                "inputs": {n: tensor(a, n in settings.redact, settings.digest_over_bytes)
                           for n, a in record.inputs.items()},
                "outputs": {n: tensor(a, n in settings.redact, settings.digest_over_bytes)
                            for n, a in record.outputs.items()}}


def _kept(tensors: Tensors | None, settings: PayloadLog) -> Tensors:
    """A record's tensors: a redacted one as a stand-in of its dtype and shape (no bytes of it kept)."""
    return {name: np.broadcast_to(np.zeros((), np.asarray(array).dtype), np.shape(array))
            if name in settings.redact else array for name, array in (tensors or {}).items()}


def _stand_in(array: np.ndarray) -> bool:
    array = np.asarray(array)
    return array.size > 1 and not any(array.strides)


def _nbytes(array: np.ndarray) -> int:
    array = np.asarray(array)
    if _stand_in(array):
        return 0
    if array.dtype == object:
        return sum(len(v) if isinstance(v, (bytes, bytearray, str)) else 8 for v in array.ravel())
    return array.nbytes


def tensor(array: np.ndarray, redacted: bool, digest_over_bytes: int) -> dict[str, Any]:
    """A tensor as a payload line holds it: its values, its digest when large, or neither when redacted."""
    try:
        datatype = v2_datatype(array.dtype)
    except ValueError:  # (no tensor the server decodes has such a dtype; a model's output might)
        datatype = str(array.dtype)
    entry: dict[str, Any] = {"datatype": datatype, "shape": list(array.shape)}
    if redacted:
        entry["redacted"] = True
    elif array.dtype == object or array.dtype.kind in "SU":
        values = [v if isinstance(v, (bytes, bytearray)) else str(v).encode() for v in array.ravel()]
        if sum(len(v) for v in values) > digest_over_bytes:
            entry["sha256"] = hashlib.sha256(b"".join(len(v).to_bytes(4, "little") + v for v in values)).hexdigest()
        else:
            entry["data"] = [bytes(v).decode("utf-8", "replace") for v in values]
    elif array.nbytes > digest_over_bytes:
        entry["sha256"] = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    elif array.dtype.kind in "biuf":  # (orjson writes the array as a list, faster than tolist)
        entry["data"] = np.ascontiguousarray(array, array.dtype.newbyteorder("=")).ravel()
    else:  # BF16 (ml_dtypes), as its float32 values
        entry["data"] = np.asarray(array, np.float32).ravel()
    return entry
