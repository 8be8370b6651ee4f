"""What ``ric serve``'s terminal shows: ric's own lines (and its loggers' warnings). Ray's and Serve's chatter (token notices, banners,
"Connecting to existing Serve app", the core worker's errors while the local Ray stops) goes to a log file in
``~/.ric/logs`` (a folder of the user's own, mode 0700), without ANSI colour codes; the replicas' own logs
stay in Ray's session folder, which ``ric serve`` names at start.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

from deployments.private_files import private_folder

#: The loggers of Ray and Serve in the ric serve process (Serve configures its own at import).
RAY_LOGGERS = ("ray", "ray.serve")
#: ric's own loggers, whose warnings the terminal shows too.
RIC_LOGGERS = ("cluster", "deployments", "ensembles")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class PlainFormatter(logging.Formatter):
    """Ray's format, without the colour codes Ray puts into some messages."""

    def format(self, record: logging.LogRecord) -> str:
        return _ANSI.sub("", super().format(record))


def log_folder() -> Path:
    """``~/.ric/logs`` (beside the server record), created private; UnsafeFolder if it is not."""
    base = Path(os.environ.get("RIC_STATE_DIR", Path.home() / ".ric")).expanduser()
    return private_folder(base / "logs")


def open_log() -> Path:
    """A new log file for this ric serve, readable by its user only."""
    path = log_folder() / f"serve-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    return path


def ray_logs_to(path: Path) -> None:
    """Send the log lines of this process (Ray's and Serve's: ric's own terminal lines are prints) to
    ``path`` instead of the terminal, through the root logger. Call after ``ray.serve`` is imported (it gives
    its logger a terminal handler then) and start Ray with ``configure_logging=False`` (Ray then clears the
    ``ray`` logger's handlers, and its messages reach the root's)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(PlainFormatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    terminal = logging.StreamHandler(sys.stderr)  # ric's own warnings (a model left out, say) stay in sight
    terminal.setLevel(logging.WARNING)
    terminal.setFormatter(logging.Formatter("ric: %(message)s"))
    for name in RIC_LOGGERS:
        logging.getLogger(name).addHandler(terminal)
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True


def stderr_to(path: Path) -> None:
    """Point this process's standard error (file descriptor 2, where Ray's core worker writes its C++ log
    lines) at ``path``: for the stop, when the local Ray's processes going away make it complain. Left as it
    is when the file cannot be opened (removed meanwhile, say): the stop goes on either way."""
    sys.stderr.flush()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError:
        return
    os.dup2(fd, 2)
    os.close(fd)
