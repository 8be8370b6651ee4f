"""What a repository load or unload carries (Triton's model control parameters). No Ray here."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cluster.repository.paths import check_file_path
from deployments.config.model_config import ConfigError, ModelConfig, parse_yaml
from deployments.errors import invalid


def unload_dependents(parameters: dict) -> bool:
    """Triton's ``unload_dependents`` parameter of an unload: a bool (anything else is refused, as Triton's)."""
    value = parameters.get("unload_dependents", False)
    if not isinstance(value, bool):
        raise invalid(f"Unable to parse 'unload_dependents': expected a bool, got {value!r}")
    return value


def ensemble_steps(config: dict[str, Any]) -> list[str]:
    """The models an ensemble's config (Triton's JSON form) calls, each once; none for other models."""
    steps = (config.get("ensemble_scheduling") or {}).get("step") or []
    return list(dict.fromkeys(step["model_name"] for step in steps))


def uploaded_files(model: str, parameters: dict) -> dict[str, bytes]:
    """Triton's ``file:<path>`` parameters of a load: base64 text over HTTP, bytes over gRPC."""
    files = {}
    for key, value in parameters.items():
        if not key.startswith("file:"):
            continue
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise invalid(f"parameter '{key}' of the load of '{model}' is not base64") from None
        if not isinstance(value, bytes):
            raise invalid(f"parameter '{key}' of the load of '{model}' must be base64 text or bytes")
        files[check_file_path(key.removeprefix("file:"))] = value
    return files


def override_config(model: str, config: Any) -> ModelConfig:
    """The ``config`` parameter of a repository load (a JSON string, as tritonclient sends it, or an object)."""
    text = config if isinstance(config, str) else json.dumps(config)
    try:
        return parse_yaml(text, f"the config parameter of the load of '{model}'", model)
    except ConfigError as exc:
        raise invalid(str(exc)) from None
