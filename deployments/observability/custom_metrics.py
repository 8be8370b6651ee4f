"""Metrics a model defines itself (Triton's ``pb_utils.MetricFamily``), kept per process and summed per cluster.

A model's families live in the registry of the process it runs in, each owned by the model that made it
(the replica reports a model's own families only, so several models in one process never count twice). A
replica sends a snapshot with its statistics reports; a stub process sends its own with each batch's answer
when something changed (deployments/backends/process.py). The collector sums the snapshots of every
replica (``merge``: counters, histograms and gauges alike; a gauge's sum over the cluster's copies is what
one server's gauge is on Triton) and ``/metrics`` shows them beside Triton's ``nv_*`` families.
"""

from __future__ import annotations

import bisect
import collections
import re
import threading
from dataclasses import dataclass, field

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
#: Prefixes of the server's own families, which a model's may not take.
RESERVED_PREFIXES = ("nv_", "ric_", "ray_")

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
FamilyId = tuple[str, str]  # (the model that made it, its name): models in one process keep theirs apart


@dataclass
class Histogram:
    buckets: tuple[float, ...]  # upper bounds, ascending (+Inf implied)
    counts: list[int]  # per bucket, the last for +Inf (not cumulative)
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


@dataclass
class FamilySnapshot:
    """One family's samples: a value per label set (a Histogram for a histogram family)."""

    description: str
    kind: str
    values: dict[Labels, float | Histogram] = field(default_factory=dict)


Snapshot = dict[str, FamilySnapshot]  # family name -> its samples


class Registry:
    """The families of the models in one process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._families: dict[FamilyId, FamilySnapshot] = {}
        self._holders: dict[FamilyId, int] = {}  # MetricFamily objects alive (at 0 the family goes)
        self._dropped: collections.deque[FamilyId] = collections.deque()  # those whose objects went, to apply
        self.changes = 0  # grows with every change (a stub sends its snapshot when it moved)

    def family(self, owner: str, name: str, description: str, kind: str) -> FamilyId:
        """Declare a family of ``owner``'s (again: the same one, if its kind agrees); returns its id."""
        if not isinstance(name, str) or not _NAME.match(name) or name.startswith(RESERVED_PREFIXES):
            raise ValueError(f"a metric family's name must match [a-zA-Z_:][a-zA-Z0-9_:]* and not start with "
                             f"{' or '.join(RESERVED_PREFIXES)} (the server's own): {name!r}")
        family = (owner, name)
        with self._lock:
            self._drain()
            known = self._families.get(family)
            if known is not None and known.kind != kind:
                raise ValueError(f"metric family '{name}' is already a {known.kind}, not a {kind}")
            if known is None:
                self._families[family] = FamilySnapshot(description, kind)
            self._holders[family] = self._holders.get(family, 0) + 1
            self.changes += 1
        return family

    def drop(self, family: FamilyId) -> None:
        """A MetricFamily object of ``family`` is gone; with the last one, the family and its metrics go
        (Triton's families live as long as their objects: a model's are gone once it unloads). Applied at the
        next call: this runs from ``__del__``, which the garbage collector may run while the lock is held."""
        self._dropped.append(family)

    def _drain(self) -> None:
        """Apply the drops (with the lock held)."""
        while self._dropped:
            family = self._dropped.popleft()
            self._holders[family] = self._holders.get(family, 1) - 1
            if self._holders[family] <= 0:
                self._holders.pop(family, None)
                self._families.pop(family, None)
                self.changes += 1

    def _samples(self, family: FamilyId) -> FamilySnapshot:
        known = self._families.get(family)
        if known is None:
            raise ValueError(f"metric family '{family[1]}' has been deleted: keep its MetricFamily object as long "
                             "as its metrics are used")
        return known

    def metric(self, family: FamilyId, labels: dict[str, str], buckets: list[float] | None) -> Labels:
        """Add a metric of a family (its samples start at zero); returns its key."""
        if not isinstance(labels, dict) or not all(isinstance(k, str) and _LABEL.match(k) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise ValueError(f"a metric's labels are a dict of str names ([a-zA-Z_][a-zA-Z0-9_]*) to str values: "
                             f"{labels!r}")
        key, name = tuple(sorted(labels.items())), family[1]
        with self._lock:
            self._drain()
            samples = self._samples(family)
            if samples.kind == HISTOGRAM:
                bounds = tuple(float(b) for b in buckets or ())
                if not bounds or list(bounds) != sorted(set(bounds)):
                    raise ValueError(f"a histogram metric of '{name}' needs buckets: ascending distinct upper "
                                     f"bounds, got {buckets!r}")
                samples.values.setdefault(key, Histogram(bounds, [0] * (len(bounds) + 1)))
            elif buckets is not None:
                raise ValueError(f"only histogram metrics take buckets; '{name}' is a {samples.kind}")
            else:
                samples.values.setdefault(key, 0.0)
            self.changes += 1
        return key

    def update(self, family: FamilyId, key: Labels, how: str, value: float) -> None:
        """``how``: "increment" (counters and gauges; a counter only up), "set" (gauges), "observe"
        (histograms)."""
        value, name = float(value), family[1]
        with self._lock:
            self._drain()
            samples = self._samples(family)
            allowed = {COUNTER: ("increment",), GAUGE: ("increment", "set"), HISTOGRAM: ("observe",)}[samples.kind]
            if how not in allowed:
                raise ValueError(f"a {samples.kind} metric ('{name}') takes {' or '.join(allowed)}(), not {how}()")
            if how == "observe":
                samples.values[key].observe(value)
            elif how == "set":
                samples.values[key] = value
            else:
                if samples.kind == COUNTER and value < 0:
                    raise ValueError(f"counter '{name}' only goes up: increment({value:g})")
                samples.values[key] += value
            self.changes += 1

    def value(self, family: FamilyId, key: Labels) -> float:
        with self._lock:
            self._drain()
            value = self._samples(family).values[key]
        if isinstance(value, Histogram):
            raise ValueError(f"a histogram metric ('{family[1]}') has no single value")
        return value

    def snapshot(self, owner: str | None = None) -> Snapshot:
        """A copy of the families ``owner`` made (None: every model's, summed by name)."""
        with self._lock:
            self._drain()
            copies = [{name: FamilySnapshot(s.description, s.kind, {
                           key: Histogram(v.buckets, list(v.counts), v.total, v.count) if isinstance(v, Histogram)
                           else v for key, v in s.values.items()})}
                      for (who, name), s in self._families.items() if owner is None or who == owner]
        return merge(copies)


#: This process's registry.
REGISTRY = Registry()


def merge(snapshots: list[Snapshot]) -> Snapshot:
    """The sum of several copies' snapshots, sample by sample (the first description and kind of a name
    win; a family of another kind or a histogram of other buckets under the same name is left out)."""
    merged: Snapshot = {}
    for snapshot in snapshots:
        for name, family in snapshot.items():
            into = merged.setdefault(name, FamilySnapshot(family.description, family.kind))
            if into.kind != family.kind:
                continue
            for key, value in family.values.items():
                held = into.values.get(key)
                if held is None:
                    into.values[key] = (Histogram(value.buckets, list(value.counts), value.total, value.count)
                                        if isinstance(value, Histogram) else value)
                elif isinstance(held, Histogram):
                    if held.buckets == value.buckets:
                        held.counts = [a + b for a, b in zip(held.counts, value.counts)]
                        held.total += value.total
                        held.count += value.count
                else:
                    into.values[key] = held + value
    return merged
