"""Triton's Prometheus metrics at the ingress's /metrics: the same counts as the statistics extension, for
every replica, with failures by reason; and their copies in Ray's own metrics (``ray_nv_*``)."""

from __future__ import annotations

import pytest
import ray
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import settled, wait_for


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text page: (name, labels) -> value (counters under their own names)."""
    response = requests.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name.removesuffix("_total") if family.type == "counter" else s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def labelled(samples, name: str, **labels) -> float:
    (value,) = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return value


def earlier(samples, name: str, **labels) -> float:
    """A count before the test: 0 while the model's replicas have not reported yet (their first report
    comes with their first request, or their heartbeat)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    return found[0] if found else 0


def infer_flaky(server, x, datatype="INT64") -> int:
    body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": datatype, "data": [x]}]}
    return requests.post(f"{server}/v2/models/flaky/infer", json=body, timeout=30).status_code


REASONS = ("BACKEND", "OTHER", "REJECTED", "CANCELED")


def test_metrics_match_the_statistics_and_count_failures_by_reason(server):
    flaky = {"model": "flaky", "version": "1"}

    def read():
        """The statistics, then the metrics, which then hold every report the statistics had. A statistics
        request waits at most 1 s for each replica's report: on two loaded cores one may come later."""
        (stats,) = requests.get(f"{server}/v2/models/flaky/versions/1/stats", timeout=30).json()["model_stats"]
        return stats, scrape(f"{server}/metrics")

    def counts(samples) -> tuple[float, ...]:
        return (earlier(samples, "nv_inference_request_success", **flaky),
                *(earlier(samples, "nv_inference_request_failure", reason=r, **flaky) for r in REASONS))

    before = settled(lambda: counts(read()[1]))  # earlier tests' requests all reported
    assert [infer_flaky(server, x) for x in range(6)] == [200] * 6
    assert infer_flaky(server, -1) == 500  # the model raises: BACKEND
    assert infer_flaky(server, 1.5, "FP32") == 400  # fails its checks: OTHER

    expected = tuple(b + added for b, added in zip(before, (6, 1, 1, 0, 0)))
    readings = []

    def reported() -> bool:  # every report in, in the statistics and in the metrics
        stats, samples = read()
        readings.append((stats, samples))
        return counts(samples) == expected and stats["inference_stats"]["success"]["count"] == expected[0]

    wait_for(reported, timeout_s=30, what=lambda: f"the metrics to count {expected} (success, then failures by "
             f"reason {REASONS}), not {counts(readings[-1][1]) if readings else None}, and the statistics too")
    stats, after = readings[-1]
    inference = stats["inference_stats"]
    assert labelled(after, "nv_inference_count", **flaky) == stats["inference_count"]
    assert labelled(after, "nv_inference_exec_count", **flaky) == stats["execution_count"]
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        metric = labelled(after, f"nv_inference_{stage}_duration_us", **flaky)
        assert metric == pytest.approx(inference[stage]["ns"] / 1000), stage
    request_ns = inference["success"]["ns"] + inference["fail"]["ns"]
    assert labelled(after, "nv_inference_request_duration_us", **flaky) == pytest.approx(request_ns / 1000)
    histogram = "nv_inference_first_response_histogram_ms"
    assert labelled(after, f"{histogram}_count", **flaky) == inference["success"]["count"]
    assert labelled(after, f"{histogram}_bucket", le="+Inf", **flaky) == inference["success"]["count"]
    assert labelled(after, "nv_inference_pending_request_count", **flaky) == 0  # nothing waits now
    assert labelled(after, "ric_model_replicas", model="flaky") == 2  # its two replicas report
    assert 0 <= labelled(after, "nv_cpu_utilization", node="127.0.0.1") <= 1
    assert labelled(after, "nv_cpu_memory_used_bytes", node="127.0.0.1") > 0
    assert not any(name.startswith("nv_gpu") for name, _ in after)  # no GPU on this node


def test_response_cache_metrics(server):
    body = {"inputs": [{"name": "X", "shape": [1, 2], "datatype": "FP32", "data": [7.0, 8.0]}]}
    for _ in range(3):
        assert requests.post(f"{server}/v2/models/cached/infer", json=body, timeout=30).status_code == 200
    requests.get(f"{server}/v2/models/cached/stats", timeout=30)  # (has every replica report now)
    samples = scrape(f"{server}/metrics")
    assert labelled(samples, "nv_cache_num_hits_per_model", model="cached") >= 2
    assert labelled(samples, "nv_cache_num_misses_per_model", model="cached") >= 1


def test_ray_metrics_carry_copies_under_ray_names(server):
    assert infer_flaky(server, 3) == 200
    (node,) = [node for node in ray.nodes() if node["Alive"]]
    url = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"

    def copied() -> bool:
        text = requests.get(url, timeout=30).text
        return any(line.startswith("ray_nv_inference_request_success{") and 'model="flaky"' in line
                   for line in text.splitlines()) and "ray_serve_" in text  # Serve's own stay beside them

    wait_for(copied, timeout_s=60, what="ray_nv_inference_request_success and Serve's metrics at Ray's port")
