"""Triton's priority levels, served: a request with a higher priority (its ``priority`` parameter) leaves
the model's queue before those waiting at the default level."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import requests


def test_a_high_priority_request_overtakes_the_queue(server):
    def post(parameters=None) -> requests.Response:
        body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
        if parameters:
            body["parameters"] = parameters
        return requests.post(f"{server}/v2/models/prioritized/infer", json=body, timeout=60)

    def order(response: requests.Response) -> int:
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"][0]

    with ThreadPoolExecutor(8) as pool:
        low = [pool.submit(post) for _ in range(4)]
        time.sleep(0.5)  # the first runs (0.3 s each), three wait at the default level
        high = pool.submit(post, {"priority": 1})
        orders = [order(f.result()) for f in low]
        urgent = order(high.result())
    assert urgent < max(orders), (urgent, orders)  # it overtook at least the last one waiting
    assert sorted(orders + [urgent]) == list(range(min(orders), min(orders) + 5))
    bad = post({"priority": 3})
    assert bad.status_code == 400 and "not a level in 1..2" in bad.json()["error"]
