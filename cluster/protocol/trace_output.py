"""Where traces are written: the trace file of Triton's settings, one JSON object per span per line, on the
statistics collector's node. No Ray here.

Trace files live in the application's trace folder (``AppArgs.trace_dir``): a client names a file in it
(``trace.jsonl``, or its path in the folder), never a file elsewhere on the node or in a folder below it
(the trace API would otherwise write any file the server may). The folder is private to the server's user
(``deployments.private_files``: created 0700, refused if anyone else could put a link in it), and trace files
are opened without following links. With ``log_frequency`` N > 0, every N traces go to the next file of
``<trace_file>.0``, ``.1``, ... (the index starts again when ``trace_file`` changes), as Triton; with 0, all
go to ``trace_file`` as they arrive (Triton writes at shutdown). ``trace_count`` counts the traces written
(their root spans); spans of traces past it are dropped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from deployments.private_files import UnsafeFolder, append_private, private_folder
from deployments.errors import invalid
from deployments.observability.trace_settings import TraceSettings


def resolve(trace_dir: str, name: str) -> str:
    """``name`` (a file name, or its path) as a file directly in ``trace_dir``; INVALID_ARGUMENT for a file
    anywhere else, or when the folder is not private to the server's user."""
    if not name:
        return ""
    if "\0" in name:
        raise invalid("trace_file must not contain a NUL character")
    try:
        folder = private_folder(trace_dir).resolve()
    except UnsafeFolder as error:
        raise invalid(f"trace_file '{name}' cannot be written: the trace folder {error}") from None
    path = folder / name
    if path.parent.resolve() != folder or path.name in ("", ".", ".."):
        raise invalid(f"trace_file '{name}' is outside the trace folder {folder}: give a file name in it")
    return str(path)

logger = logging.getLogger(__name__)

#: Traces remembered (admitted, or children waiting for their root span), oldest forgotten first.
REMEMBERED = 10_000


class TraceOutput:
    """The files traces go to, by the settings of each trace's root span's model.

    A trace's root span (the ingress's) ends last and often reaches the collector after its children (each
    process sends its spans on its own): children wait here until their root admits the trace (or, past
    ``trace_count``, drops it)."""

    def __init__(self):
        self._file = ""
        self._index = 0
        self._in_file = 0  # traces in the current indexed file
        self._admitted: dict[str, str] = {}  # trace id -> the file its spans go to
        self._waiting: dict[str, list[dict[str, Any]]] = {}  # trace id -> spans waiting for their root

    def write(self, rows: list[dict[str, Any]], settings: TraceSettings) -> bool:
        """Write the spans; True when a trace count changed (the settings must be saved and pushed)."""
        counted = False
        for row in sorted(rows, key=lambda r: r["parent_id"] is not None):  # roots first: they admit traces
            trace = row["trace_id"]
            if row["parent_id"] is not None:
                if trace in self._admitted:
                    self._append(self._admitted[trace], [row])
                else:
                    _remember(self._waiting, trace, []).append(row)
                continue
            model = row["attributes"].get("model")
            waiting = self._waiting.pop(trace, [])
            if not settings.count_written(model):
                continue
            counted |= settings.of(model)["trace_count"] != "-1"
            target = _remember(self._admitted, trace, self._next_file(settings.of(model)))
            self._append(target, [row, *waiting])
        return counted

    @staticmethod
    def _append(target: str, rows: list[dict[str, Any]]) -> None:
        if not target:
            return
        try:  # the folder still the server's own, the file its own: else nothing is written
            append_private(Path(target).parent, Path(target).name, "".join(json.dumps(row) + "\n" for row in rows))
        except (UnsafeFolder, OSError, ValueError) as error:
            logger.warning("%d spans not written to %s: %s", len(rows), target, error)

    def _next_file(self, settings: dict[str, Any]) -> str:
        """The file the next trace goes to under ``settings``."""
        name, frequency = settings["trace_file"], int(settings["log_frequency"])
        if name != self._file:
            self._file, self._index, self._in_file = name, 0, 0
        if not name or frequency == 0:
            return name
        if self._in_file >= frequency:
            self._index, self._in_file = self._index + 1, 0
        self._in_file += 1
        return f"{name}.{self._index}"


def _remember(table: dict, key: str, value):
    """``table[key]`` (set to ``value`` when new), forgetting the oldest entries past REMEMBERED."""
    if key not in table:
        table[key] = value
        while len(table) > REMEMBERED:
            table.pop(next(iter(table)))
    return table[key]
