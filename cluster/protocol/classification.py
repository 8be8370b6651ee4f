"""Triton's classification extension: a requested output with the ``classification`` parameter (HTTP
``"parameters": {"classification": k}``, gRPC's ``class_count``) answers, instead of the tensor, its k
largest values per batch row as BYTES ``"<value>:<index>"`` strings, or ``"<value>:<index>:<label>"`` with
the labels of the output's ``label_filename`` (one per line, in the model's folder).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deployments.errors import invalid


def class_count(output: str, parameters: dict[str, Any]) -> int | None:
    """The classification an output asks for (None: the tensor itself)."""
    if "classification" not in parameters:
        return None
    count = parameters["classification"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise invalid(f"output '{output}': 'classification' must be a positive integer, got {count!r}")
    return count


def classify(name: str, tensor: np.ndarray, count: int, batched: bool, labels: list[str] | None) -> np.ndarray:
    """The ``count`` largest values of ``tensor`` (per row of its batch dim when ``batched``), largest first,
    as Triton writes them (values with C's ``%f`` for floats)."""
    if tensor.dtype == object or tensor.dtype.kind not in "biuf":
        raise invalid(f"output '{name}': classification needs a numeric output, not {tensor.dtype}")
    if batched and tensor.ndim and tensor.shape[0] == 0:
        return np.empty((0, count), dtype=object)
    rows = tensor.reshape(tensor.shape[0], -1) if batched and tensor.ndim else tensor.reshape(1, -1)
    floating = tensor.dtype.kind == "f"
    answers = []
    for row in rows:
        order = np.argsort(-row.astype(np.float64), kind="stable")[:count]
        entries = []
        for index in order:
            value = f"{row[index]:f}" if floating else str(int(row[index]))
            label = labels[index] if labels and index < len(labels) else ""
            entries.append(f"{value}:{index}:{label}".encode() if label else f"{value}:{index}".encode())
        answers.append(entries)
    result = np.array(answers, dtype=object)
    return result if batched else result[0]
