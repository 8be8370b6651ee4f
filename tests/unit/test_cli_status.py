"""ric status's arithmetic: latency percentiles from the histogram, rates over a window, the text table."""

from __future__ import annotations

import asyncio

import pytest

from cluster.cli.status import render, window_numbers
from deployments.observability.statistics import LATENCY_BOUNDS_NS, VersionStatistics, merged, percentile_ns


def stats_with(latencies_ms: list[float], queue_ms: float = 0.0) -> VersionStatistics:
    stats = VersionStatistics()
    for ms in latencies_ms:
        stats.record_request(int(ms * 1e6))
        stats.queue.add(int(queue_ms * 1e6))
    return stats


def test_percentiles_are_within_half_a_bucket():
    stats = stats_with([1.0] * 98 + [100.0] * 2)
    assert percentile_ns(stats.latency, 0.5) == pytest.approx(1e6, rel=0.5)
    assert percentile_ns(stats.latency, 0.99) == pytest.approx(100e6, rel=0.5)
    assert percentile_ns(VersionStatistics().latency, 0.5) is None
    assert len(stats.latency) == len(LATENCY_BOUNDS_NS) + 1


def test_failures_are_counted_apart_and_histograms_merge():
    stats = stats_with([2.0])
    stats.record_request(int(5e6), ok=False)
    assert (stats.success.count, stats.fail.count, sum(stats.latency)) == (1, 1, 1)
    assert sum(merged([stats, stats_with([3.0, 4.0])]).latency) == 3


def test_window_numbers_are_the_difference_of_two_snapshots():
    before = stats_with([1.0] * 10, queue_ms=0.5)
    after = merged([before, stats_with([10.0] * 20, queue_ms=2.0)])
    numbers = window_numbers(before, after, seconds=2.0)
    assert numbers["requests_per_s"] == 10.0 and numbers["failures_per_s"] == 0
    assert numbers["p50_ms"] == pytest.approx(10.0, rel=0.5) and numbers["queue_ms"] == 2.0
    assert window_numbers(None, before, 1.0)["requests_total"] == 10


def test_the_table_names_models_nodes_autoscaling_and_pending():
    status = {"application": "ric", "window_s": 5.0, "pending": [
        {"deployment": "big", "application": "ric", "status": "UPDATING", "reason": "taken more than 30s to be scheduled"}],
        "models": {"simple": {"status": "HEALTHY", "replicas_by_node": {"10.0.0.1": 2, "10.0.0.2": 1},
                              "replicas_starting": 1, "target_replicas": 4, "gpus_per_replica": 0.25, "in_flight": 7,
                              "autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0},
                              "versions": {"1": {"requests_per_s": 12.5, "p50_ms": 1.2, "p99_ms": 9.0,
                                                 "queue_ms": 0.3}}}}}
    text = render(status)
    assert "10.0.0.1: 2, 10.0.0.2: 1 (+1 starting)" in text
    assert "1..4 at 2, target 4" in text and "0.25" in text and "12.5" in text
    assert "IN FLIGHT" in text and " 7 " in text
    assert "pending:\n  big (UPDATING): taken more than 30s to be scheduled" in text


def test_the_collector_sums_what_each_replica_last_said_it_held():
    from cluster.protocol.statistics import StatisticsCollector

    async def scenario():
        collector = StatisticsCollector.func_or_class()
        await collector.report("m", "r1", {1: stats_with([1.0])}, 2)
        await collector.report("m", "r2", {1: stats_with([2.0, 3.0])}, 3)
        await collector.report("m", "r1", {1: stats_with([1.0, 1.0])}, 0)  # r1's newer report replaces its older
        assert await collector.in_flight() == {"m": 3}
        assert (await collector.merged())["m"][1].success.count == 4

    asyncio.run(scenario())


def test_a_statistics_request_wakes_the_waiting_replicas_and_counts_their_reports():
    """Replicas long-poll the collector between reports; a statistics request ends their polls and waits
    for the reports it asked for, so its counts are those of this moment, not of the last heartbeat."""
    from cluster.protocol.statistics import StatisticsCollector

    async def replica(collector, name: str, served: list[float]):
        while True:  # as StatisticsReporter._beat: wait to be asked (or the heartbeat), then report
            await collector.next_report("m", name, 60.0)
            await collector.report("m", name, {1: stats_with(served)})

    async def scenario():
        collector = StatisticsCollector.func_or_class()
        served = {"r1": [], "r2": []}
        replicas = [asyncio.ensure_future(replica(collector, name, s)) for name, s in served.items()]
        await asyncio.sleep(0.01)
        served["r1"] += [1.0, 2.0]  # served after their last report, long before a heartbeat
        served["r2"] += [3.0]
        (row,) = await asyncio.wait_for(collector.model_stats({"m": [1]}), 5)
        assert row["inference_stats"]["success"]["count"] == 3
        served["r2"] += [1.0]
        (row,) = await asyncio.wait_for(collector.model_stats({"m": [1]}), 5)
        assert row["inference_stats"]["success"]["count"] == 4
        other = await asyncio.wait_for(collector.model_stats({"other": None}), 5)  # asks no replica of m
        assert other == []
        for task in replicas:
            task.cancel()

    asyncio.run(scenario())


def test_the_table_shows_each_versions_weight_and_its_shadows_agreement():
    shadow = {"canary:2": {"agreed": 90, "differed": 10, "failed": 2, "dropped": 5, "agreement": 0.9, "p99_ms": 3.0}}
    status = {"application": "ric", "window_s": 5.0, "pending": [], "models": {"canary": {
        "status": "HEALTHY", "replicas_by_node": {"10.0.0.1": 1}, "replicas_starting": 0, "target_replicas": 1,
        "gpus_per_replica": 0, "in_flight": 0, "autoscaling": None,
        "traffic": {"weights": {"1": 3, "2": 1}, "sticky_by": ""},
        "versions": {"1": {"requests_per_s": 3.0, "shadow": shadow}, "2": {"requests_per_s": 1.0}}}}}
    lines = render(status).splitlines()
    assert "WEIGHT" in lines[1] and "SHADOW" in lines[1]
    assert " 75% " in lines[2] and "canary:2 agreed 90.0% of 100, 2 failed, 5 dropped" in lines[2]
    assert " 25% " in lines[3]
