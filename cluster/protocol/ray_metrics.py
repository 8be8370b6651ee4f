"""Copies of ric's ``nv_*`` counters and gauges in Ray's own metrics, for clusters scraped through Ray.

Ray's metrics agent on each node serves every ``ray.util.metrics`` metric on the node's metrics export port
(the one Ray's Prometheus service discovery lists); Ray names them ``ray_<name>``, so they arrive as
``ray_nv_inference_count`` and so on (a Prometheus relabel rule in docs/observability.md gives back Triton's names).
Only the statistics collector publishes them, from its cluster-wide sums, every ``PUBLISH_S``: the request
path pays nothing. They are Ray gauges holding the cumulative counts (Ray's counters would be incremented by
deltas and named ``..._total``); ``rate()`` reads them as counters. The latency histogram is not copied
(Ray's histograms take observations, not bucket counts): Serve's own ``ray_serve_*`` latency histograms are
there beside them.
"""

from __future__ import annotations

from ray.util import metrics as ray_metrics

from cluster.protocol.metrics import Family

#: How often the collector refreshes the copies (Ray drops a gauge not set for about two export intervals).
PUBLISH_S = 5.0


class RayMetrics:
    """The Ray gauges behind the copies, created as families first appear."""

    def __init__(self):
        self._gauges: dict[str, ray_metrics.Gauge] = {}

    def publish(self, families: list[Family]) -> None:
        for family in families:
            if family.type == "histogram":
                continue
            for _, labels, value in family.samples:
                gauge = self._gauges.get(family.name)
                if gauge is None:
                    gauge = self._gauges[family.name] = ray_metrics.Gauge(
                        family.name, description=family.help, tag_keys=tuple(labels))
                gauge.set(value, tags=labels)
