"""Triton's response cache, one per model copy: answers keyed by the request, kept in a bounded LRU.

A model whose config has ``response_cache { enable: true }`` answers a request it has answered before
(same version, inputs, requested outputs and parameters) from the cache, without running the model. The
key is a digest of all of these (input names, datatypes, shapes and bytes); entries are evicted oldest
first past the byte bound (``AppArgs.response_cache_bytes``); an answer larger than the bound is not kept.
A version update or config change empties the cache. No Ray here.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

import numpy as np

from deployments.scheduling.batching import Tensors


def request_key(version: int, inputs: Tensors, outputs: list[str] | None, parameters: dict | None) -> bytes:
    digest = hashlib.blake2b(digest_size=32)
    digest.update(json.dumps([version, sorted(outputs) if outputs else None, parameters or {}],
                             sort_keys=True, default=str).encode())
    for name in sorted(inputs):
        array = inputs[name]
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        if array.dtype == object:
            for item in array.reshape(-1):
                data = item if isinstance(item, bytes) else str(item).encode()
                digest.update(len(data).to_bytes(8, "little") + data)
        else:
            digest.update(np.ascontiguousarray(array).data)
    return digest.digest()


def answer_bytes(outputs: Tensors) -> int:
    """Memory an answer holds: its arrays' bytes (a BYTES element's own length)."""
    return sum(sum(len(item) for item in array.reshape(-1)) if array.dtype == object else array.nbytes
               for array in outputs.values())


class ResponseCache:
    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.held = 0
        self._entries: OrderedDict[bytes, tuple[Tensors, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> Tensors | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: bytes, outputs: Tensors) -> None:
        size = answer_bytes(outputs) + len(key)
        if size > self.limit or key in self._entries:
            return
        while self.held + size > self.limit:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.held -= evicted
        self._entries[key] = (outputs, size)
        self.held += size

    def clear(self) -> None:
        self._entries.clear()
        self.held = 0
