"""Drift monitoring: how far the data a model sees now has moved from a reference profile. No Ray here.

A **profile** (``ric profile`` writes one from a file of reference data; ``profile_of``) describes each feature
of a model's tensors: for numbers the bin edges at the reference's quantiles and the share of the reference
in each bin, with its count, mean, std and quantiles; for BYTES tensors their length (a number) and their
values as categories (the most common, the rest as one). A feature is a whole tensor (``value``), or with
``columns`` each column of its last dim too (``0``, ``1``, ...).

Each copy of the model counts what it sees into the profile's bins over a sliding window (``Windows``: ten
slices of ``window_s / 10``, the oldest dropped as time passes), and reports the window's counts with its
statistics; the collector adds up the windows of every live copy (counts add, so the sum over replicas is the
cluster's window) and scores each feature against its reference: PSI (population stability index; 0.1-0.25
is commonly read as a moderate shift, above 0.25 as a large one) and KS (the largest gap between the two
cumulative distributions, over the bins). At most ``MAX_ELEMENTS`` values of a tensor are counted per
request (evenly strided), so a large tensor costs what a small one does; requests are counted in groups
(``COUNT_EVERY``), which measured 0.76x of the model's throughput without drift counted one by one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

#: Values of one tensor counted per request at most (a strided sample past it).
MAX_ELEMENTS = 1024
#: Columns of a tensor profiled one by one at most (``columns``); the rest only as part of ``value``.
MAX_COLUMNS = 64
#: Categories of a BYTES tensor kept by name; the others count as one.
MAX_CATEGORIES = 20
#: Requests a window keeps before it counts them (one numpy pass per feature for all of them).
COUNT_EVERY = 64
#: Slices of a window (the window moves on by one slice at a time).
SLICES = 10
#: The share given to an empty bin in PSI (its logarithm would be infinite).
EPSILON = 1e-4
OTHER = "<other>"


def features(name: str, array: np.ndarray, columns: bool, most: int | None = MAX_ELEMENTS
             ) -> Iterable[tuple[str, str, np.ndarray]]:
    """The features of one tensor: (feature, kind, values), kind "number" or "category"; at most ``most``
    values each (None: all)."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in "SU":
        values = [v if isinstance(v, (bytes, bytearray)) else str(v).encode() for v in _sample(array.ravel(), most)]
        yield "length", "number", np.array([len(v) for v in values], np.float64)
        yield "category", "category", np.array([bytes(v).decode("utf-8", "replace") for v in values], object)
        return
    if array.dtype.kind not in "biuf":
        return
    yield "value", "number", _sample(array.ravel(), most).astype(np.float64)
    if columns and array.ndim >= 2:
        flat = array.reshape(-1, array.shape[-1])
        per_column = None if most is None else max(1, most // max(1, flat.shape[1]))
        rows = _sample(np.arange(flat.shape[0]), per_column)
        for column in range(min(flat.shape[1], MAX_COLUMNS)):
            yield str(column), "number", flat[rows, column].astype(np.float64)


def _combined(arrays: list[np.ndarray], columns: bool) -> np.ndarray:
    """Several requests' values of one tensor as one array, each request's at most ``MAX_ELEMENTS``
    (rows of its last dim kept whole where columns are features)."""
    arrays = [np.asarray(array) for array in arrays]
    widths = {a.shape[-1] if a.ndim >= 2 else None for a in arrays}
    if columns and len(widths) == 1 and None not in widths and 0 not in widths and arrays[0].dtype.kind in "biuf":
        (width,) = widths
        return np.concatenate([_sample(a.reshape(-1, width), max(1, MAX_ELEMENTS // width)) for a in arrays])
    return np.concatenate([_sample(a.ravel(), MAX_ELEMENTS) for a in arrays])  # (columns of other widths: none)


def _sample(values: np.ndarray, most: int | None) -> np.ndarray:
    return values if most is None or len(values) <= most else values[:: math.ceil(len(values) / most)]


def profile_of(tensors: dict[str, np.ndarray], bins: int = 10, columns: bool = False) -> dict[str, Any]:
    """The profile of reference data (each tensor's rows along its first dim), as JSON-able data."""
    pooled = {f"{name}/{feature}": (kind, values) for name, array in sorted(tensors.items())
              for feature, kind, values in features(name, array, columns, most=None)}
    return profile_of_features(pooled, bins, columns)


def profile_of_features(pooled: dict[str, tuple[str, np.ndarray]], bins: int = 10, columns: bool = False
                        ) -> dict[str, Any]:
    """The profile of each feature's reference values ("tensor/feature" -> (kind, values))."""
    return {"bins": bins, "columns": columns, "features": {
        key: _number_profile(values, bins) if kind == "number" else _category_profile(values)
        for key, (kind, values) in sorted(pooled.items()) if len(values)}}


def _number_profile(values: np.ndarray, bins: int) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError("a feature has no finite values to profile")
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return {"kind": "number", "edges": edges.tolist(), "reference": (counts / counts.sum()).tolist(),
            "count": int(len(values)), "mean": float(values.mean()), "std": float(values.std()),
            "quantiles": {str(q): float(np.quantile(values, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}}


def _category_profile(values: np.ndarray) -> dict[str, Any]:
    counts = Counter(values.tolist())
    kept = [category for category, _ in counts.most_common(MAX_CATEGORIES)]
    shares = [counts[c] for c in kept] + [sum(counts.values()) - sum(counts[c] for c in kept)]
    return {"kind": "category", "categories": kept, "reference": [n / sum(shares) for n in shares],
            "count": len(values)}


def read_profile(path) -> dict[str, Any]:
    with open(path) as file:
        profile = json.load(file)
    if not isinstance(profile, dict) or not isinstance(profile.get("features"), dict):
        raise ValueError(f"{path}: not a drift profile (ric profile writes one)")
    return profile


@dataclass
class FeatureWindow:
    """One feature's counts over a window, beside its reference (what a replica reports; windows add up)."""

    kind: str
    reference: list[float]
    edges: list[float] = field(default_factory=list)  # numbers: the bins' inner edges
    categories: list[str] = field(default_factory=list)  # categories: those kept by name
    threshold: float = 0.0
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def copy(self) -> "FeatureWindow":
        return dataclasses.replace(self, counts=list(self.counts))

    def merge(self, other: "FeatureWindow") -> None:
        if other.edges != self.edges or other.categories != self.categories:
            return  # another reference (a replica on an older profile): not comparable
        self.counts = [a + b for a, b in zip(self.counts or [0] * len(other.counts), other.counts)]
        self.count += other.count
        self.total += other.total
        self.total_sq += other.total_sq

    def scores(self) -> dict[str, float] | None:
        """PSI and KS of the window against the reference (None while the window is empty)."""
        if not self.count:
            return None
        seen = np.asarray(self.counts, np.float64) / self.count
        expected = np.asarray(self.reference, np.float64)
        p, q = np.maximum(seen, EPSILON), np.maximum(expected, EPSILON)
        psi = float(np.sum((p - q) * np.log(p / q)))
        ks = float(np.max(np.abs(np.cumsum(seen) - np.cumsum(expected)))) if self.kind == "number" else float(
            np.max(np.abs(seen - expected)))
        return {"psi": psi, "ks": ks}

    def mean_std(self) -> tuple[float, float] | None:
        if not self.count or self.kind != "number":
            return None
        mean = self.total / self.count
        return mean, math.sqrt(max(0.0, self.total_sq / self.count - mean * mean))

    def quantile(self, q: float) -> float | None:
        """A number feature's ``q`` quantile over the window, read from its bins: interpolated within an
        inner bin, the nearest edge in the two open-ended ones (so accurate to a bin of the reference)."""
        if not self.count or self.kind != "number" or not self.edges:
            return None
        rank, seen = q * self.count, 0
        for i, count in enumerate(self.counts):
            if count and seen + count >= rank:
                if i == 0 or i == len(self.edges):
                    return self.edges[min(i, len(self.edges) - 1)]
                low, high = self.edges[i - 1], self.edges[i]
                return low + (high - low) * (rank - seen) / count
            seen += count
        return self.edges[-1]


class Windows:
    """The sliding windows of one model version's features in one replica (on its event loop)."""

    def __init__(self, profile: dict[str, Any], window_s: float, threshold: float):
        self.profile, self.window_s, self.threshold = profile, window_s, threshold
        self._slices: list[tuple[int, dict[str, FeatureWindow]]] = []  # (slice number, its counts)
        self._pending: list[tuple[int, dict[str, np.ndarray]]] = []  # requests not counted yet

    def observe(self, tensors: dict[str, np.ndarray], now: float | None = None) -> None:
        """Count one request's tensors (those the profile knows) into the current slice: kept by reference
        and counted ``COUNT_EVERY`` requests at a time (one numpy pass per feature, not one per request), or
        when the window is read."""
        number = int((time.time() if now is None else now) / (self.window_s / SLICES))
        self._pending.append((number, tensors))
        if len(self._pending) >= COUNT_EVERY:
            self._count()

    def _count(self) -> None:
        pending, self._pending = self._pending, []
        columns = bool(self.profile.get("columns"))
        latest = self._slices[-1][0] if self._slices else 0
        pending = [(max(number, latest), tensors) for number, tensors in pending]  # (a clock set back)
        for number in sorted({number for number, _ in pending}):
            if not self._slices or self._slices[-1][0] != number:
                self._slices = [s for s in self._slices if s[0] > number - SLICES] + [(number, {})]
            current = self._slices[-1][1]
            requests = [tensors for n, tensors in pending if n == number]
            for name in sorted({name for tensors in requests for name in tensors}):
                combined = _combined([tensors[name] for tensors in requests if name in tensors], columns)
                for feature, kind, values in features(name, combined, columns, most=None):
                    key = f"{name}/{feature}"
                    reference = self.profile["features"].get(key)
                    if reference is not None and reference["kind"] == kind:
                        self._add(current, key, reference, values)

    def _add(self, current: dict[str, FeatureWindow], key: str, reference: dict[str, Any], values: np.ndarray):
        window = current.get(key)
        if window is None:
            window = current[key] = self._empty(reference)
        if reference["kind"] == "number":
            finite = values[np.isfinite(values)]
            bins = np.bincount(np.searchsorted(reference["edges"], finite, side="right"), minlength=len(window.counts))
            window.total += float(finite.sum())
            window.total_sq += float(np.square(finite).sum())
        else:
            index = {c: i for i, c in enumerate(reference["categories"])}
            bins = np.bincount([index.get(v, len(index)) for v in values], minlength=len(window.counts))
        window.counts = [a + int(b) for a, b in zip(window.counts, bins)]
        window.count += int(bins.sum())

    def _empty(self, reference: dict[str, Any]) -> FeatureWindow:
        return FeatureWindow(reference["kind"], list(reference["reference"]), list(reference.get("edges", [])),
                             list(reference.get("categories", [])), self.threshold,
                             [0] * len(reference["reference"]))

    def window(self, now: float | None = None) -> dict[str, FeatureWindow]:
        """Every feature's counts over the last ``window_s`` (a copy)."""
        self._count()
        number = int((time.time() if now is None else now) / (self.window_s / SLICES))
        total: dict[str, FeatureWindow] = {}
        for slice_number, counts in self._slices:
            if slice_number <= number - SLICES:
                continue
            for key, window in counts.items():
                if key not in total:
                    total[key] = self._empty(self.profile["features"][key])
                total[key].merge(window)
        return total


@dataclass
class Sample:
    """The first requests' values of each feature in one replica, for a reference taken from the first N
    requests (``reference_requests``): sent with its reports until the collector has built the profile
    every copy then counts against (``ReferenceSamples`` there)."""

    requests: int = 0
    values: dict[str, tuple[str, list]] = field(default_factory=dict)  # "tensor/feature" -> (kind, values)
    wanted: int = 0  # the requests the reference is to be taken from (the config's reference_requests)

    def add(self, tensors: dict[str, np.ndarray], wanted: int, columns: bool = False) -> None:
        if self.requests >= wanted:
            return
        self.requests += 1
        for name, array in tensors.items():
            for feature, kind, values in features(name, array, columns):
                kept = self.values.setdefault(f"{name}/{feature}", (kind, []))[1]
                kept.extend(values[: max(0, MAX_SAMPLE - len(kept))].tolist())


#: Values of one feature a replica keeps for a reference taken from the first requests.
MAX_SAMPLE = 20_000


class ReferenceSamples:
    """The collector's side: every replica's latest sample of a model, and the profile once ``wanted``
    requests are in them."""

    def __init__(self):
        self._samples: dict[str, dict[str, Sample]] = {}  # model -> replica -> its sample

    def add(self, model: str, replica: str, sample: Sample) -> None:
        self._samples.setdefault(model, {})[replica] = sample

    def profile(self, model: str, wanted: int, bins: int = 10, columns: bool = False) -> dict[str, Any] | None:
        """The profile of the model's first ``wanted`` requests once its replicas' samples hold them."""
        samples = list(self._samples.get(model, {}).values())
        if sum(sample.requests for sample in samples) < wanted:
            return None
        pooled: dict[str, tuple[str, list]] = {}
        for sample in samples:
            for key, (kind, values) in sample.values.items():
                pooled.setdefault(key, (kind, []))[1].extend(values)
        self._samples.pop(model, None)
        profile = profile_of_features({key: (kind, np.asarray(values, object if kind == "category" else np.float64))
                                       for key, (kind, values) in pooled.items()}, bins, columns)
        return {**profile, "reference_requests": wanted}

