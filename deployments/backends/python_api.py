"""The parts of Triton's ``pb_utils`` that a model uses beside its requests: the config its static
``auto_complete_config`` completes, and its own metrics (``MetricFamily``); ``triton_python_backend_utils``
serves them under their Triton names."""

from __future__ import annotations

import copy
from typing import Any

from deployments.backends import bls
from deployments.observability import custom_metrics


class MetricFamily:
    """A family of the model's own metrics (Triton's custom metrics API), shown in ``/metrics`` beside
    Triton's, summed over the model's copies in the cluster: ``MetricFamily(name, description, kind)``, its
    metrics ``family.Metric(labels={...})`` (a histogram's with ``buckets=[...]``)."""

    COUNTER, GAUGE, HISTOGRAM = custom_metrics.COUNTER, custom_metrics.GAUGE, custom_metrics.HISTOGRAM

    def __init__(self, name: str, description: str, kind: str):
        if kind not in (self.COUNTER, self.GAUGE, self.HISTOGRAM):
            raise ValueError(f"MetricFamily kind must be MetricFamily.COUNTER, GAUGE or HISTOGRAM, not {kind!r}")
        calling = bls.current()
        owner = calling.callers[-1] if calling and calling.callers else ""
        self._family = custom_metrics.REGISTRY.family(owner, name, str(description), kind)

    def __del__(self):
        if getattr(self, "_family", None) is not None:
            custom_metrics.REGISTRY.drop(self._family)

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> "Metric":  # noqa: N802
        return Metric(self._family, labels or {}, buckets)


class Metric:
    """One metric of a family: ``increment(v)`` (counters, gauges), ``set(v)`` (gauges), ``observe(v)``
    (histograms), ``value()``."""

    def __init__(self, family: tuple[str, str], labels: dict[str, str], buckets: list[float] | None = None):
        self._family, self._key = family, custom_metrics.REGISTRY.metric(family, labels, buckets)

    def increment(self, value: float) -> None:
        custom_metrics.REGISTRY.update(self._family, self._key, "increment", value)

    def set(self, value: float) -> None:
        custom_metrics.REGISTRY.update(self._family, self._key, "set", value)

    def observe(self, value: float) -> None:
        custom_metrics.REGISTRY.update(self._family, self._key, "observe", value)

    def value(self) -> float:
        return custom_metrics.REGISTRY.value(self._family, self._key)


class ModelConfig:
    """The config a model's static ``auto_complete_config(auto_complete_model_config)`` reads and completes
    (Triton's JSON form); the method returns it."""

    def __init__(self, config: dict[str, Any]):
        self._config = config

    def as_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    def set_max_batch_size(self, max_batch_size: int) -> None:
        configured = self._config.get("max_batch_size", 0)
        if configured and configured != max_batch_size:
            raise ValueError(f"the configuration sets max_batch_size {configured}; auto_complete_config "
                             f"may not change it to {max_batch_size}")
        self._config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        self._config.setdefault("dynamic_batching", {})

    def set_model_transaction_policy(self, policy: dict[str, Any]) -> None:
        self._config["model_transaction_policy"] = {**self._config.get("model_transaction_policy", {}), **policy}

    def add_input(self, tensor: dict[str, Any]) -> None:
        self._add("input", tensor)

    def add_output(self, tensor: dict[str, Any]) -> None:
        self._add("output", tensor)

    def _add(self, kind: str, tensor: dict[str, Any]) -> None:
        if not isinstance(tensor, dict) or not {"name", "data_type", "dims"} <= tensor.keys():
            raise ValueError(f"add_{kind}() takes a dict with 'name', 'data_type' and 'dims', got {tensor!r}")
        if any(t.get("name") == tensor["name"] for t in self._config.get(kind, [])):
            raise ValueError(f"{kind} '{tensor['name']}' is already in the model configuration")
        self._config.setdefault(kind, []).append(dict(tensor))
