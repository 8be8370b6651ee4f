"""Triton's Prometheus metrics (``nv_*``), made from the statistics collector's cluster-wide sums. No Ray here.

The collector already holds every replica's cumulative statistics (model replicas, colocated Ingress copies,
ensembles, on every node) and every node's latest host sample, so one scrape of it is the whole cluster,
summed once: ``families`` turns them into metric families with Triton's names, labels and units, and
``exposition`` writes Prometheus's text format. Nothing is added to the request path: the counts are the
ones the statistics extension reports.

The text is written here rather than by prometheus_client, whose writer names a counter's family
``<name>_total``; Triton's counters (``nv_inference_count``) have no suffix and dashboards query them so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from deployments.observability.custom_metrics import FamilySnapshot, Histogram
from deployments.observability.host_usage import HostUsage
from deployments.observability.statistics import FAILURE_REASONS, LATENCY_BOUNDS_NS, Duration, VersionStatistics

#: Per model version, Triton's counters: name, help, the value from a version's statistics.
_COUNTERS = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_count", "Number of inferences performed (a batch of n counts n; not cached requests)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (not cached requests)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds, failed and "
     "cached requests included", lambda s: (s.success.ns + s.fail.ns) / 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s.queue.ns / 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s.compute_input.ns / 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s.compute_infer.ns / 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s.compute_output.ns / 1000),
)
#: Per model version, for models whose response cache has been used.
_CACHE_COUNTERS = (
    ("nv_cache_num_hits_per_model", "Number of cache hits per model", lambda s: s.cache_hit.count),
    ("nv_cache_num_misses_per_model", "Number of cache misses per model", lambda s: s.cache_miss.count),
    ("nv_cache_hit_duration_per_model", "Total cache hit duration per model, in microseconds",
     lambda s: s.cache_hit.ns / 1000),
    ("nv_cache_miss_duration_per_model", "Total cache miss (lookup and insert) duration per model, in "
     "microseconds", lambda s: s.cache_miss.ns / 1000),
)
#: The latency histogram's bucket bounds in milliseconds (the statistics keep them in nanoseconds).
_BOUNDS_MS = tuple(bound / 1e6 for bound in LATENCY_BOUNDS_NS)
HISTOGRAM = "nv_inference_first_response_histogram_ms"
#: The quantiles of drift windows exported (within the inner bins of a reference of 4 bins or more; their
#: profiles keep the same and two more).
QUANTILES = (0.25, 0.5, 0.75)


@dataclass
class Family:
    """One metric family: name, help, Prometheus type and samples (sample name, labels, value)."""

    name: str
    help: str
    type: str  # counter, gauge or histogram
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        self.samples.append((self.name + suffix, labels, value))


def families(stats: dict[str, dict[int, VersionStatistics]], hosts: Iterable[HostUsage],
             replicas: dict[str, int]) -> list[Family]:
    """Every metric of the cluster: ``stats`` per model and version (summed over replicas), the latest
    sample of each node, and the live copies (replicas, colocated copies) of each model."""
    per_version = [(model, version, s) for model, versions in sorted(stats.items())
                   for version, s in sorted(versions.items())]
    out = []
    for name, text, value in _COUNTERS[:1]:
        out.append(_per_version(name, text, "counter", per_version, value))
    failure = Family("nv_inference_request_failure", "Number of failed inference requests, all batch sizes, "
                     "by reason (REJECTED, CANCELED, BACKEND, OTHER)", "counter")
    for model, version, s in per_version:
        for reason in FAILURE_REASONS:
            failure.add({"model": model, "version": str(version), "reason": reason}, s.failures.get(reason, 0))
    out.append(failure)
    out.extend(_per_version(name, text, "counter", per_version, value) for name, text, value in _COUNTERS[1:])
    out.append(_per_version("nv_inference_pending_request_count", "Instantaneous number of pending requests "
                            "awaiting execution per model", "gauge", per_version, lambda s: s.pending))
    cached = [(model, version, s) for model, version, s in per_version if s.cache_hit.count or s.cache_miss.count]
    if cached:
        out.extend(_per_version(name, text, "counter", cached, value) for name, text, value in _CACHE_COUNTERS)
    out.append(_histogram(per_version))
    out.extend(_shadow_families(per_version) + _payload_family(per_version) + _drift_families(per_version))
    copies = Family("ric_model_replicas", "Copies serving each model that reported in the last 30 s (its "
                    "replicas, and the Ingress replicas that colocate it)", "gauge")
    for model, count in sorted(replicas.items()):
        copies.add({"model": model}, count)
    out.append(copies)
    out.extend(_host_families(list(hosts)))
    return out


def _per_version(name: str, text: str, kind: str, per_version, value) -> Family:
    family = Family(name, text, kind)
    for model, version, s in per_version:
        family.add({"model": model, "version": str(version)}, value(s))
    return family


def _histogram(per_version) -> Family:
    """Successful requests by latency, in milliseconds: the time to a model's one response (for a decoupled
    model, to its last), as Triton's first-response histogram; percentiles come from
    ``histogram_quantile`` over its buckets."""
    family = Family(HISTOGRAM, "Duration from request to first response in milliseconds (a decoupled model's "
                    "last)", "histogram")
    for model, version, s in per_version:
        _add_latency(family, {"model": model, "version": str(version)}, s.latency, s.success)
    return family


def _add_latency(family: Family, labels: dict[str, str], latency: list[int], total: Duration) -> None:
    """A latency histogram's samples: cumulative buckets (``LATENCY_BOUNDS_NS``, in ms), count and sum."""
    seen = 0
    for bound, count in zip(_BOUNDS_MS, latency):
        seen += count
        family.add({**labels, "le": _number(bound)}, seen, "_bucket")
    family.add({**labels, "le": "+Inf"}, total.count, "_bucket")
    family.add(labels, total.count, "_count")
    family.add(labels, total.ns / 1e6, "_sum")


def _shadow_families(per_version) -> list[Family]:
    """What the shadow candidates did with the copies of each version's requests (for models with one)."""
    outcomes = Family("ric_shadow_requests", "Copies of a model version's requests sent to its shadow candidate, "
                      "by outcome (agreed, differed, failed, dropped: its queue was full)", "counter")
    latency = Family("ric_shadow_duration_ms", "Duration of the shadow candidate's answers in milliseconds",
                     "histogram")
    for model, version, s in per_version:
        for candidate, counts in sorted(s.shadow.items()):
            name, _, candidate_version = candidate.rpartition(":")
            labels = {"model": model, "version": str(version), "candidate": name,
                      "candidate_version": candidate_version}
            for outcome in ("agreed", "differed", "failed", "dropped"):
                outcomes.add({**labels, "outcome": outcome}, getattr(counts, outcome))
            _add_latency(latency, labels, counts.latency, counts.duration)
    return [family for family in (outcomes, latency) if family.samples]


def _payload_family(per_version) -> list[Family]:
    """Payload logging's records per version: sampled and queued, written, dropped (its queue was full)."""
    family = Family("ric_payload_records", "Requests of a model version sampled for its payload log, by outcome "
                    "(logged: accepted, written, dropped: not accepted, the queue was full; lost: accepted and "
                    "never written)", "counter")
    for model, version, s in per_version:
        if s.payloads.logged or s.payloads.dropped:
            for outcome in ("logged", "written", "dropped", "lost"):
                family.add({"model": model, "version": str(version), "outcome": outcome}, getattr(s.payloads, outcome))
    return [family] if family.samples else []


def _drift_families(per_version) -> list[Family]:
    """Drift monitoring per feature over its window, summed over the live copies: scores against the
    reference (PSI, KS), the threshold, the values counted and their mean and std (numbers)."""
    score = Family("ric_drift_score", "Drift of a feature over its window from its reference profile, by method "
                   "(psi: population stability index, ks: largest gap between the distributions)", "gauge")
    threshold = Family("ric_drift_threshold", "The PSI above which a feature's drift is logged as a warning", "gauge")
    count = Family("ric_drift_window_values", "Values of a feature counted in its window", "gauge")
    mean = Family("ric_drift_window_mean", "Mean of a number feature over its window", "gauge")
    std = Family("ric_drift_window_std", "Standard deviation of a number feature over its window", "gauge")
    quantile = Family("ric_drift_window_quantile", "Quantiles of a number feature over its window, read from its "
                      "reference's bins", "gauge")
    for model, version, s in per_version:
        for key, window in sorted(s.drift.items()):
            tensor, _, feature = key.rpartition("/")
            labels = {"model": model, "version": str(version), "tensor": tensor, "feature": feature}
            count.add(labels, window.count)
            threshold.add(labels, window.threshold)
            for method, value in (window.scores() or {}).items():
                score.add({**labels, "method": method}, value)
            if (moments := window.mean_std()) is not None:
                mean.add(labels, moments[0])
                std.add(labels, moments[1])
                for q in QUANTILES:
                    quantile.add({**labels, "quantile": str(q)}, window.quantile(q))
    return [family for family in (score, threshold, count, mean, std, quantile) if family.samples]


def custom_families(snapshot: dict[str, FamilySnapshot]) -> list[Family]:
    """The models' own metric families (Triton's custom metrics), their labels as the models gave them."""
    out = []
    for name, samples in sorted(snapshot.items()):
        family = Family(name, samples.description, samples.kind)
        for key, value in sorted(samples.values.items()):
            labels = dict(key)
            if not isinstance(value, Histogram):
                family.add(labels, value)
                continue
            family.add(labels, value.count, "_count")
            family.add(labels, value.total, "_sum")
            seen = 0
            for bound, count in zip((*value.buckets, math.inf), value.counts):
                seen += count
                family.add({**labels, "le": _number(float(bound))}, seen, "_bucket")
        out.append(family)
    return out


def _host_families(hosts: list[HostUsage]) -> list[Family]:
    cpu = [Family("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0], per node", "gauge"),
           Family("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes, per node", "gauge"),
           Family("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes, per node", "gauge")]
    gpu = [Family("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge"),
           Family("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge"),
           Family("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge"),
           Family("nv_gpu_power_usage", "GPU power usage in watts", "gauge"),
           Family("nv_gpu_power_limit", "GPU power management limit in watts", "gauge")]
    for host in sorted(hosts, key=lambda h: h.node):
        for family, value in zip(cpu, (host.cpu_utilization, host.cpu_memory_total_bytes, host.cpu_memory_used_bytes)):
            family.add({"node": host.node}, value)
        for g in host.gpus:
            for family, value in zip(gpu, (g.utilization, g.memory_total_bytes, g.memory_used_bytes,
                                           g.power_usage_watts, g.power_limit_watts)):
                family.add({"gpu_uuid": g.uuid, "node": host.node}, value)
    return cpu + [family for family in gpu if family.samples]  # no GPU metrics on a cluster without GPUs


def exposition(metrics: list[Family]) -> bytes:
    """Prometheus's text format (version 0.0.4) of ``metrics``."""
    lines = []
    for family in metrics:
        lines.append(f"# HELP {family.name} {_escape(family.help, quote=False)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for name, labels, value in family.samples:
            pairs = ",".join(f'{key}="{_escape(str(v))}"' for key, v in labels.items())
            lines.append(f"{name}{{{pairs}}} {_number(value)}" if pairs else f"{name} {_number(value)}")
    return ("\n".join(lines) + "\n").encode()


#: The content type of ``exposition``'s text.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(text: str, quote: bool = True) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def _number(value: float) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)
