"""Batching arithmetic: which requests can run together, how to merge them and how to split results.

Requests run together when every input has the same datatype and the same shape past the batch dim;
they are concatenated along the batch dim and the outputs are split back by row counts.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

Tensors = dict[str, np.ndarray]


def signature(inputs: Tensors) -> Hashable:
    """What must agree for two requests to share a batch: names, dtypes and non-batch shapes."""
    return tuple(sorted((name, array.dtype.str, array.shape[1:]) for name, array in inputs.items()))


def plan_batches(keys: Sequence[Hashable], rows: Sequence[int], max_rows: int) -> list[list[int]]:
    """Group request indices by key, then cut each group into runs of at most ``max_rows`` rows.

    Order is kept within a group; a single request larger than ``max_rows`` runs alone.
    """
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    batches: list[list[int]] = []
    for members in groups.values():
        current: list[int] = []
        current_rows = 0
        for index in members:
            if current and current_rows + rows[index] > max_rows:
                batches.append(current)
                current, current_rows = [], 0
            current.append(index)
            current_rows += rows[index]
        batches.append(current)
    return batches


def merge(requests: Sequence[Tensors]) -> Tensors:
    """Concatenate requests along the batch dim (one request is passed through without a copy)."""
    if len(requests) == 1:
        return requests[0]
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split(outputs: Tensors, rows: Sequence[int]) -> list[Tensors]:
    """Split batched outputs back into one dict per request by its row count."""
    if len(rows) == 1:
        return [outputs]
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise ValueError(
                f"output '{name}' has shape {list(array.shape)}, expected a batch dim of {total} rows"
            )
    cuts = np.cumsum(rows)[:-1]
    parts: list[Tensors] = [{} for _ in rows]
    for name, array in outputs.items():
        for part, piece in zip(parts, np.split(array, cuts)):
            part[name] = piece
    return parts
