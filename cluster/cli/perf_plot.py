"""``ric perf --plot FILE.png``: throughput and latency over time, for people who would rather look than read.

Each measured request is kept with when it finished; the cells are drawn one after another on one time
axis, cut into bins (a second, or a tenth of a short cell): requests per second in each bin above, the
p50 and p99 latency of the requests that finished in it below, each cell named at its start. Needs
matplotlib (``pip install matplotlib``, or the project's ``bench`` extra).
"""

from __future__ import annotations

import numpy as np


def timeline(finished_s: list[float], latencies_ms: list[float], seconds: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per bin of one cell: its start (s from the cell's start), requests/s, p50 and p99 latency (ms; NaN
    where no request finished)."""
    width = min(1.0, max(seconds / 10, 0.05))
    edges = np.arange(0.0, seconds + width / 2, width)
    finished, latencies = np.asarray(finished_s), np.asarray(latencies_ms)
    rates, p50, p99 = [], [], []
    for low, high in zip(edges[:-1], edges[1:]):
        inside = latencies[(finished >= low) & (finished < high)]
        rates.append(len(inside) / width)
        p50.append(np.percentile(inside, 50) if len(inside) else np.nan)
        p99.append(np.percentile(inside, 99) if len(inside) else np.nan)
    return edges[:-1], np.array(rates), np.array(p50), np.array(p99)


def plot(path: str, cells: list[tuple[str, list[float], list[float], float]]) -> None:
    """Draw ``cells`` (label, finished seconds, latencies in ms, measured seconds) to the PNG ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    figure, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    offset = 0.0
    for label, finished, latencies, seconds in cells:
        starts, rates, p50, p99 = timeline(finished, latencies, seconds)
        top.step(starts + offset, rates, where="post", color="tab:blue")
        bottom.plot(starts + offset, p50, color="tab:green", label="p50" if offset == 0 else None)
        bottom.plot(starts + offset, p99, color="tab:red", label="p99" if offset == 0 else None)
        for axis in (top, bottom):
            axis.axvline(offset, color="grey", linewidth=0.5)
        top.annotate(label, (offset, 1), xycoords=("data", "axes fraction"), rotation=90, va="top", fontsize=7)
        offset += seconds
    top.set_ylabel("requests/s")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("seconds measured (cells one after another)")
    bottom.legend(loc="upper right")
    top.set_title("ric perf: throughput and latency over time")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
