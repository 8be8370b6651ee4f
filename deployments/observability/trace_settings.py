"""Triton's trace extension settings: global ones and per-model overrides, checked by name. No Ray here.

Triton's JSON gives every value as a string (``trace_level`` as a list of strings); so do these. A model's
settings are the global ones with its overrides on top; a ``null`` (HTTP) or empty value (gRPC) removes an
override. ``trace_count`` counts down as traces are written ("-1": no limit); once it is "0" nothing more
is sampled until a client sets it again.
"""

from __future__ import annotations

from typing import Any

from deployments.errors import invalid

#: Triton's settings and defaults (``GET /v2/trace/setting``).
DEFAULTS: dict[str, Any] = {"trace_file": "", "trace_level": ["OFF"], "trace_rate": "1000", "trace_count": "-1",
                            "log_frequency": "0", "trace_mode": "triton"}
LEVELS = ("OFF", "TIMESTAMPS")


def _integer(name: str, value: str, lowest: int) -> str:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise invalid(f"{name} must be an integer string, got {value!r}") from None
    if number < lowest:
        raise invalid(f"{name} must be >= {lowest}, got {number}")
    return str(number)


def checked(name: str, value: Any) -> Any:
    """One setting's value in its stored form; a bad one raises INVALID_ARGUMENT naming it."""
    if name not in DEFAULTS:
        raise invalid(f"unknown trace setting '{name}'; the settings are {', '.join(DEFAULTS)}")
    if name == "trace_level":
        levels = [value] if isinstance(value, str) else value
        if not isinstance(levels, list) or not levels or not all(isinstance(v, str) for v in levels):
            raise invalid(f"trace_level must be a list of levels ({', '.join(LEVELS)}), got {value!r}")
        for level in levels:
            if level == "TENSORS":
                raise invalid("trace_level TENSORS is not served: spans carry timestamps, not tensors")
            if level not in LEVELS:
                raise invalid(f"unknown trace_level '{level}'; the levels are {', '.join(LEVELS)}")
        return ["OFF"] if levels == ["OFF"] else [level for level in levels if level != "OFF"]
    if name == "trace_mode":
        if value != "triton":
            raise invalid(f"trace_mode '{value}' is not served: 'triton' (spans written to trace_file)")
        return value
    if name == "trace_file":
        if not isinstance(value, str):
            raise invalid(f"trace_file must be a string, got {value!r}")
        return value
    value = value[0] if isinstance(value, list) and len(value) == 1 else value
    return _integer(name, value, {"trace_rate": 1, "trace_count": -1, "log_frequency": 0}[name])


class TraceSettings:
    """The application's trace settings: the global ones and each model's overrides."""

    def __init__(self, saved: dict[str, Any] | None = None):
        saved = saved or {}
        self.global_: dict[str, Any] = {**DEFAULTS, **saved.get("global", {})}
        self.models: dict[str, dict[str, Any]] = {m: dict(o) for m, o in saved.get("models", {}).items()}

    def to_dict(self) -> dict[str, Any]:
        return {"global": dict(self.global_), "models": {m: dict(o) for m, o in self.models.items()}}

    def of(self, model: str | None) -> dict[str, Any]:
        """The settings that apply to ``model`` (None: the global ones)."""
        return {**self.global_, **(self.models.get(model, {}) if model else {})}

    def update(self, model: str | None, changes: dict[str, Any]) -> None:
        """Apply ``changes`` (all checked first) globally or to one model; None removes a model's override
        (globally: back to the default)."""
        values = {name: None if value is None else checked(name, value) for name, value in changes.items()}
        if model:
            overrides = self.models.setdefault(model, {})
            for name, value in values.items():
                if value is None:
                    overrides.pop(name, None)
                else:
                    overrides[name] = value
        else:
            for name, value in values.items():
                self.global_[name] = DEFAULTS[name] if value is None else value

    def traced(self, model: str | None) -> bool:
        """Whether requests for ``model`` may be sampled now (asked on every request: no dict is built)."""
        overrides = self.models.get(model) or self.global_ if model else self.global_
        level = overrides.get("trace_level", self.global_["trace_level"])
        return level != ["OFF"] and overrides.get("trace_count", self.global_["trace_count"]) != "0"

    def count_written(self, model: str | None) -> bool:
        """One trace of ``model`` was written: count it down where a count is set (its override's, else the
        global one); False when the count had already run out (the trace is not written)."""
        holder = self.models.get(model, {}) if model and "trace_count" in self.models.get(model, {}) else self.global_
        count = int(holder["trace_count"])
        if count == 0:
            return False
        if count > 0:
            holder["trace_count"] = str(count - 1)
        return True
