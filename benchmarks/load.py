"""A small closed-loop HTTP load generator: N concurrent clients, each sending its next request when the last
answers, for a fixed time. Reports requests/s, latency percentiles and errors. Bounded: it stops by itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import numpy as np


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    def row(self) -> str:
        return (f"{self.throughput:8.1f} req/s  p50 {self.percentile(50):6.1f} ms  p90 {self.percentile(90):6.1f} ms  "
                f"p99 {self.percentile(99):6.1f} ms  errors {self.errors}")


async def closed_loop(call: Callable[[aiohttp.ClientSession], Awaitable[bool]], concurrency: int,
                      duration_s: float, warmup_s: float = 1.0) -> LoadResult:
    """Run ``call`` (returns True on success) from ``concurrency`` clients; measure after a warm-up."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup_s, start + warmup_s + duration_s

        async def client():
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                ok = await call(session)
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append((done - now) * 1000)
                    errors += not ok

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return LoadResult(len(latencies), errors, duration_s, np.array(latencies))
