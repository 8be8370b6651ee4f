"""Argument types the ``ric`` commands share: numbers with bounds, refused by argparse with the reason."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def positive(kind: type) -> Callable[[str], Any]:
    return _bounded(kind, lambda value: value > 0, "a number > 0")


def non_negative(kind: type) -> Callable[[str], Any]:
    return _bounded(kind, lambda value: value >= 0, "a number >= 0")


def _bounded(kind: type, ok: Callable[[Any], bool], wanted: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}")
        return value

    return parse


def reasons(exc: Exception) -> str:
    """A pydantic ValidationError (or any ValueError) in one line: each field and what is wrong with it."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in errors())


def ingress_autoscaling(text: str):
    """``field=value,...`` of an ``autoscaling`` config (e.g. ``max_replicas=4,upscale_delay_s=5``), for the
    ingress: at least one replica."""
    from pydantic import ValidationError

    from deployments.config.messages import Autoscaling

    try:
        fields = dict(item.split("=", 1) for item in text.split(",") if item.strip())
        config = Autoscaling.model_validate({key.strip(): value.strip() for key, value in fields.items()})
    except ValueError as exc:  # a ValidationError is one; a pair without '=' too
        why = reasons(exc) if isinstance(exc, ValidationError) else "expected field=value pairs separated by commas"
        raise argparse.ArgumentTypeError(f"{text!r}: {why} (fields: {', '.join(Autoscaling.model_fields)})") from None
    if config.min_replicas < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: min_replicas must be at least 1 (the ingress answers HTTP and gRPC)")
    return config


def restriction(text: str):
    """Triton's ``<group>[,<group>...]:<key>=<value>`` form of a restricted API setting."""
    from pydantic import ValidationError

    from cluster.protocol.restrictions import API_GROUPS, Restriction

    try:
        return Restriction.parse(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {reasons(exc)} (groups: {', '.join(API_GROUPS)})") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
