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
