"""Which requests' callers have gone (Triton's ``request.is_cancelled()``), by token, in this process.

A replica gives every request a token as it checks it (``begin``) and drops it when the request is done
(``end``); when the request's caller gives up (the client disconnected, its deadline or the execution timeout
passed) the replica marks it (``cancel``): a request still queued then leaves the queue without running, and
a model running it reads the mark (``is_cancelled``). A stub process keeps its own marks, sent down its pipe
(deployments/backends/process.py). Marks of requests no longer running are not kept.
"""

from __future__ import annotations

import itertools

_tokens = itertools.count(1)
_live: dict[int, bool] = {}  # token -> cancelled; dict operations are atomic under the GIL


def begin(token: int | None = None) -> int:
    """Start tracking a request (a new token unless given one); returns its token."""
    token = next(_tokens) if token is None else token
    _live[token] = False
    return token


def cancel(token: int) -> None:
    if token in _live:
        _live[token] = True


def is_cancelled(token: int) -> bool:
    return _live.get(token, False)


def end(token: int) -> None:
    _live.pop(token, None)
