"""Triton's Prometheus metrics from summed statistics: names, labels, units, and text that Prometheus's own
parser (prometheus_client's) reads back."""

from __future__ import annotations

import re

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.protocol.metrics import HISTOGRAM, exposition, families
from deployments.observability.host_usage import GpuUsage, HostUsage
from deployments.observability.statistics import PayloadStatistics, ShadowStatistics, VersionStatistics
from deployments.operations.drift import Windows, profile_of
from tests.conftest import dashboard_queries


def _stats() -> VersionStatistics:
    stats = VersionStatistics()
    for ns in (150_000, 2_000_000, 2_500_000):
        stats.record_request(ns)
    stats.record_request(1_000, ok=False, reason="OTHER")
    stats.record_request(9_000, ok=False)  # a backend failure
    stats.record_execution(rows=3, requests=3, input_ns=10_000, infer_ns=300_000, output_ns=20_000)
    stats.queue.add(600_000, 3)
    stats.inference_count = 3
    stats.pending = 4
    return stats


def _parsed(stats, hosts=(), replicas=None) -> dict[str, dict]:
    text = exposition(families(stats, hosts, replicas or {})).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}, text


def _value(family, **labels) -> float:
    (value,) = [s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())
                and s.name in (family.name, f"{family.name}_total")]  # (the parser names counters so)
    return value


def test_counts_durations_and_failure_reasons_per_model_version():
    host = HostUsage("10.0.0.1", 0.25, 1_000, 4_000)
    parsed, text = _parsed({"m": {1: _stats()}, "e": {1: VersionStatistics()}}, [host], {"m": 2})
    assert "# TYPE nv_inference_count counter\n" in text  # Triton's names: no _total suffix
    assert 'nv_inference_request_success{model="m",version="1"} 3\n' in text
    labels = {"model": "m", "version": "1"}
    assert _value(parsed["nv_inference_count"], **labels) == 3
    assert _value(parsed["nv_inference_exec_count"], **labels) == 1
    assert _value(parsed["nv_inference_request_duration_us"], **labels) == (4_650_000 + 10_000) / 1000
    assert _value(parsed["nv_inference_queue_duration_us"], **labels) == 600
    assert _value(parsed["nv_inference_compute_infer_duration_us"], **labels) == 900  # 300 us for each of 3
    assert _value(parsed["nv_inference_pending_request_count"], **labels) == 4
    failures = {s.labels["reason"]: s.value for s in parsed["nv_inference_request_failure"].samples
                if s.labels["model"] == "m"}
    assert failures == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 1}
    assert _value(parsed["nv_inference_request_success"], model="e", version="1") == 0  # a model not yet used
    assert _value(parsed["ric_model_replicas"], model="m") == 2
    assert _value(parsed["nv_cpu_utilization"], node="10.0.0.1") == 0.25
    assert _value(parsed["nv_cpu_memory_used_bytes"], node="10.0.0.1") == 1_000
    assert not any(name.startswith(("nv_gpu", "nv_cache")) for name in parsed)  # no GPU, no cache used


def test_latency_histogram_is_cumulative_in_milliseconds():
    parsed, _ = _parsed({"m": {1: _stats()}})
    buckets = {s.labels["le"]: s.value for s in parsed[HISTOGRAM].samples if s.name.endswith("_bucket")}
    assert buckets["0.1"] == 0 and buckets["0.15"] == 1  # 150 us
    assert buckets["1.708593"] == 1 and buckets["2.56289"] == 3 and buckets["+Inf"] == 3
    values = list(buckets.values())
    assert values == sorted(values)
    (total,) = [s.value for s in parsed[HISTOGRAM].samples if s.name.endswith("_sum")]
    assert total == 4.65


def test_cache_and_gpu_metrics_appear_when_there_is_something_to_report():
    stats = _stats()
    stats.cache_hit.add(5_000)
    stats.cache_miss.add(7_000, 2)
    gpu = GpuUsage("GPU-1234", 0.5, 2 << 30, 80 << 30, 250.5, 700.0)
    parsed, _ = _parsed({"m": {1: stats}}, [HostUsage("n", 0.0, 0, 0, (gpu,))])
    assert _value(parsed["nv_cache_num_hits_per_model"], model="m") == 1
    assert _value(parsed["nv_cache_num_misses_per_model"], model="m") == 2
    assert _value(parsed["nv_cache_miss_duration_per_model"], model="m") == 7
    assert _value(parsed["nv_gpu_utilization"], gpu_uuid="GPU-1234") == 0.5
    assert _value(parsed["nv_gpu_memory_total_bytes"], gpu_uuid="GPU-1234") == 80 << 30
    assert _value(parsed["nv_gpu_power_usage"], gpu_uuid="GPU-1234") == 250.5


def test_label_values_are_escaped():
    parsed, text = _parsed({'we"ird\\name\n': {1: VersionStatistics()}})
    assert 'model="we\\"ird\\\\name\\n"' in text
    assert _value(parsed["nv_inference_count"], model='we"ird\\name\n') == 0


def _operated() -> VersionStatistics:
    """Statistics of a version with a shadow, a payload log and drift monitoring at work."""
    stats = _stats()
    stats.shadow["m:2"] = ShadowStatistics(agreed=3, differed=1, dropped=2)
    for ns in (1_000_000, 3_000_000, 3_000_000, 9_000_000):
        stats.shadow["m:2"].record("failed" if ns == 9_000_000 else "agreed", ns)
    stats.payloads = PayloadStatistics(logged=10, written=8, dropped=5)
    profile = profile_of({"X": np.linspace(-1, 1, 100)})
    windows = Windows(profile, 60.0, 0.25)
    windows.observe({"X": np.full(10, 0.9)}, now=100.0)
    stats.drift = windows.window(100.0)
    return stats


def test_shadow_payload_and_drift_families_per_version():
    parsed, text = _parsed({"m": {1: _operated()}, "plain": {1: _stats()}})
    shadow = {"model": "m", "version": "1", "candidate": "m", "candidate_version": "2"}
    assert _value(parsed["ric_shadow_requests"], **shadow, outcome="agreed") == 6
    assert _value(parsed["ric_shadow_requests"], **shadow, outcome="failed") == 1
    assert _value(parsed["ric_shadow_requests"], **shadow, outcome="dropped") == 2
    (count,) = [s.value for s in parsed["ric_shadow_duration_ms"].samples if s.name.endswith("_count")]
    assert count == 4
    assert _value(parsed["ric_payload_records"], model="m", outcome="dropped") == 5
    drift = {"model": "m", "version": "1", "tensor": "X", "feature": "value"}
    assert _value(parsed["ric_drift_score"], **drift, method="psi") > 1  # every value in the last bin
    assert _value(parsed["ric_drift_window_values"], **drift) == 10
    assert _value(parsed["ric_drift_window_mean"], **drift) == 0.9
    assert _value(parsed["ric_drift_window_quantile"], **drift, quantile="0.5") == pytest.approx(0.8)  # the last bin
    assert 'model="plain"' not in text.split("ric_shadow_requests", 1)[1].split("# HELP", 1)[0]


def test_every_dashboard_query_names_a_metric_we_export():
    stats = _operated()
    stats.cache_hit.add(1)
    gpu = GpuUsage("GPU-1", 0.5, 1, 2, 3.0, 4.0)
    exported = {name for family in families({"m": {1: stats}}, [HostUsage("n", 0.1, 1, 2, (gpu,))], {"m": 1})
                for name, _, _ in family.samples}
    queries = dashboard_queries()
    named = {name for query in queries for name in re.findall(r"\b(?:nv|ric)_\w+", query)}
    assert len(queries) >= 15 and named, queries
    assert named <= exported, named - exported
    assert {"nv_gpu_utilization", "ric_model_replicas", "nv_inference_pending_request_count",
            "nv_inference_first_response_histogram_ms_bucket", "nv_inference_queue_duration_us"} <= named
