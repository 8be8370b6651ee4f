"""Triton's response cache without Ray: the key, the byte bound and the LRU order."""

from __future__ import annotations

import numpy as np

from deployments.scheduling.response_cache import ResponseCache, answer_bytes, request_key

X = {"X": np.arange(4, dtype=np.float32).reshape(1, 4)}


def test_the_key_covers_version_inputs_outputs_and_parameters():
    key = request_key(1, X, None, None)
    assert key == request_key(1, {"X": X["X"].copy()}, None, None)
    different = [
        request_key(2, X, None, None),
        request_key(1, {"X": X["X"] + 1}, None, None),
        request_key(1, {"X": X["X"].astype(np.float64)}, None, None),
        request_key(1, {"X": X["X"].reshape(2, 2)}, None, None),
        request_key(1, {"Y": X["X"]}, None, None),
        request_key(1, X, ["OUT"], None),
        request_key(1, X, None, {"temperature": 1}),
        request_key(1, {"X": np.array([[b"ab", b"c"]], dtype=object)}, None, None),
    ]
    assert len({key, *different}) == len(different) + 1
    assert request_key(1, {"X": np.array([[b"ab", b"c"]], dtype=object)}, None, None) != \
        request_key(1, {"X": np.array([[b"a", b"bc"]], dtype=object)}, None, None)


def test_least_recently_used_answers_go_first_past_the_bound():
    answer = {"Y": np.zeros(100, np.uint8)}
    cache = ResponseCache(limit_bytes=3 * (100 + 32))
    keys = [request_key(1, {"X": np.array([i])}, None, None) for i in range(4)]
    for key in keys[:3]:
        cache.put(key, answer)
    assert cache.get(keys[0]) is answer  # now the most recently used
    cache.put(keys[3], answer)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is answer and cache.get(keys[3]) is answer
    assert cache.held <= cache.limit and len(cache) == 3
    cache.put(request_key(1, X, None, None), {"Y": np.zeros(1000, np.uint8)})  # larger than the bound: not kept
    assert len(cache) == 3
    cache.clear()
    assert len(cache) == 0 and cache.held == 0
    assert answer_bytes({"T": np.array([b"abc", b"de"], dtype=object)}) == 5
