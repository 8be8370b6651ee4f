"""Triton's logging extension: the log settings a client reads and changes at run time. No Ray here.

The settings are kept by the statistics collector, one set per application, and every replica process
(Ingress, model, ensemble) follows them (``deployments/observability/settings_follower.py``) and applies them to ric's
loggers (``cluster``, ``deployments``, ``ensembles``; Ray's and Serve's own keep theirs). Python's levels
are thresholds where Triton's switches are independent: the lowest enabled kind sets the level
(``log_verbose_level`` >= 1: DEBUG, which also logs every inference request with its ids).
"""

from __future__ import annotations

import logging
from typing import Any

from deployments.errors import invalid

#: Triton's settings and their defaults (``GET /v2/logging``).
DEFAULTS: dict[str, Any] = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                            "log_verbose_level": 0, "log_format": "default"}
#: ric's loggers, whose level the settings set.
LOGGERS = ("cluster", "deployments", "ensembles")
_FORMATS = ("default",)


def updated(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``current`` with ``changes`` applied, each checked by name and type; a bad one changes nothing."""
    result = dict(current)
    for name, value in changes.items():
        if name not in DEFAULTS:
            raise invalid(f"unknown log setting '{name}'; the settings are {', '.join(DEFAULTS)}")
        if name == "log_file":
            if value != current["log_file"]:
                raise invalid("log_file cannot be set at run time: ric's logs go to Ray's log folder of each "
                              "replica (`ray logs`, the dashboard)")
        elif name == "log_format":
            if value not in _FORMATS:
                raise invalid(f"log_format '{value}' is not served: only 'default' (Ray's replica log format)")
        elif name == "log_verbose_level":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise invalid(f"log_verbose_level must be an integer >= 0, got {value!r}")
        elif not isinstance(value, bool):
            raise invalid(f"{name} must be a boolean, got {value!r}")
        result[name] = value
    return result


def level(settings: dict[str, Any]) -> int:
    """The Python level the settings amount to."""
    if settings["log_verbose_level"] > 0:
        return logging.DEBUG
    for name, kind in (("log_info", logging.INFO), ("log_warning", logging.WARNING), ("log_error", logging.ERROR)):
        if settings[name]:
            return kind
    return logging.CRITICAL + 1


def apply(settings: dict[str, Any]) -> None:
    """Set ric's loggers in this process to the settings."""
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level(settings))


def log_through(component: str) -> None:
    """Send ric's loggers to the handlers of the logger ``component`` (Serve's replica logger, "ray.serve":
    the replica's log file and stderr, each line with the replica and the request id). A replica's root
    logger has no handler, so without this only warnings and errors reached stderr, bare."""
    handlers = logging.getLogger(component).handlers
    for name in LOGGERS:
        ours = logging.getLogger(name)
        if handlers and not ours.handlers:
            ours.handlers = list(handlers)
            ours.propagate = False

