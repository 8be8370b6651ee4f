"""``ric perf``: a load generator for any KServe v2 server (ours, MLServer, Triton), and the one the
benchmarks use.

Closed loop (N clients, each sending its next request when the last answers) at each concurrency, or open
loop (requests started at a fixed rate whether or not earlier ones answered; latency counted from the
planned start, so a slow server cannot hide its queue). Transports: HTTP JSON, HTTP binary, gRPC, and from
a Ray job joined to the cluster ``cluster.client``'s model client (``handle``: the node's ingress listener
where one answers) or the model deployment's own Serve handle (``serve-handle``). Each cell prints throughput (inferences/s and
requests/s), p50 / p90 / p99 latency and errors, and, where the server keeps Triton statistics, the
server-side split per request (queue vs compute) and the average batch the server formed. Every run is
bounded by its own clock.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cluster.cli.arguments import non_negative, positive
from cluster.cli.perf_clients import (PROTOCOLS, fetch_metadata, make_client, output_names, parse_shape,
                                      request_tensors)
#: Open loop: requests still unanswered beyond this many are counted as errors rather than started.
MAX_OUTSTANDING = 4096

Call = Callable[[], Awaitable[bool]]


@dataclass
class Measured:
    """What one load loop saw: per-request latencies (ms) and error count over a measured window."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    measure_from: float = 0.0  # perf_counter when the measured window began
    finished_s: list[float] = field(default_factory=list)  # when each request finished, from measure_from

    def record(self, started: float, ok: bool | str) -> None:
        now = time.perf_counter()
        self.latencies_ms.append((now - started) * 1000)
        self.finished_s.append(now - self.measure_from)
        if ok is not True:
            self.errors += 1
            self.first_error = self.first_error or (ok if isinstance(ok, str) else "request failed")


@dataclass
class Cell:
    """One measurement, as printed and as written to JSON by the benchmarks."""

    label: str
    protocol: str
    concurrency: int | None
    rate: float | None
    batch: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    first_error: str | None = None
    server: dict[str, float] | None = None
    #: What the cell measured, request by request (for --plot; not printed or written).
    measured: Measured | None = field(default=None, repr=False)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def inferences_per_s(self) -> float:
        return self.requests_per_s * self.batch

    def to_dict(self) -> dict[str, Any]:
        fields = {key: value for key, value in asdict(self).items() if key != "measured"}
        return {**fields, "requests_per_s": self.requests_per_s, "inferences_per_s": self.inferences_per_s}

    def row(self) -> str:
        load = f"c={self.concurrency}" if self.concurrency is not None else f"rate={self.rate:g}/s"
        line = (f"{self.label:<28} {load:<11} {self.inferences_per_s:9.1f} inf/s {self.requests_per_s:9.1f} req/s  "
                f"p50 {self.p50_ms:7.2f}  p90 {self.p90_ms:7.2f}  p99 {self.p99_ms:7.2f} ms  errors {self.errors}")
        if self.server:
            line += (f"  server: queue {self.server['queue_ms']:.2f} ms, compute {self.server['compute_ms']:.2f} ms, "
                     f"batch {self.server['batch']:.1f}")
        if self.first_error:
            line += f"\n    first error: {self.first_error[:200]}"
        return line


def make_cell(label: str, protocol: str, measured: Measured, batch: int, concurrency: int | None = None,
              rate: float | None = None, server: dict | None = None) -> Cell:
    lat = np.array(measured.latencies_ms) if measured.latencies_ms else np.array([np.nan])
    p50, p90, p99 = (float(np.percentile(lat, q)) for q in (50, 90, 99))
    return Cell(label, protocol, concurrency, rate, batch, len(measured.latencies_ms), measured.errors,
                measured.seconds, p50, p90, p99, measured.first_error, server, measured)


async def closed_loop(call: Call, concurrency: int, seconds: float, warmup_s: float = 1.0) -> Measured:
    """``concurrency`` clients, each calling again when its last call returns; measured after a warm-up."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds
    measured = Measured(seconds=seconds, measure_from=measure_from)

    async def client():
        while (now := time.perf_counter()) < stop_at:
            ok = await _guarded(call)
            if now >= measure_from:
                measured.record(now, ok)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return measured


async def open_loop(call: Call, rate: float, seconds: float, warmup_s: float = 1.0) -> Measured:
    """Start calls at ``rate`` per second for ``seconds`` (after a warm-up), whatever the answers do.

    Latency runs from each call's planned start. Calls left unanswered after the run (plus a grace of
    ``seconds``) are cancelled and counted as errors, so the loop always ends.
    """
    start = time.perf_counter()
    measured = Measured(seconds=seconds, measure_from=start + warmup_s)
    total, warm = int(rate * (seconds + warmup_s)), int(rate * warmup_s)
    tasks: set[asyncio.Task] = set()

    async def one(planned: float, counted: bool):
        ok = await _guarded(call)
        if counted:
            measured.record(planned, ok)

    for i in range(total):
        planned = start + i / rate
        delay = planned - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= MAX_OUTSTANDING:
            if i >= warm:
                measured.record(planned, f"more than {MAX_OUTSTANDING} requests outstanding")
            continue
        task = asyncio.ensure_future(one(planned, i >= warm))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=max(seconds, 1.0))
        for task in pending:
            task.cancel()
        for _ in pending:
            measured.record(time.perf_counter(), "no answer before the run ended")
    return measured


async def _guarded(call: Call) -> bool | str:
    try:
        return await call()
    except Exception as exc:  # a failed request is counted, never ends the run
        return f"{type(exc).__name__}: {exc}"


# -- server statistics -------------------------------------------------------------------------------------

async def read_statistics(base: str, model: str) -> dict | None:
    """The model's Triton statistics over HTTP, summed over versions; None where the server has none."""
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.get(f"{base.rstrip('/')}/v2/models/{model}/stats") as response:
                if response.status != 200:
                    return None
                stats = (await response.json())["model_stats"]
    except Exception:  # a peer without the statistics extension
        return None
    total = {"inference_count": 0, "execution_count": 0, "queue_ns": 0, "compute_ns": 0, "success": 0}
    for version in stats:
        parts = version["inference_stats"]
        total["inference_count"] += version["inference_count"]
        total["execution_count"] += version["execution_count"]
        total["success"] += parts["success"]["count"]
        total["queue_ns"] += parts["queue"]["ns"]
        total["compute_ns"] += sum(parts[p]["ns"] for p in ("compute_input", "compute_infer", "compute_output"))
    return total


def server_split(before: dict | None, after: dict | None) -> dict[str, float] | None:
    """Per request: time queued and time computing on the server, and the average batch in rows."""
    if not before or not after:
        return None
    requests = after["success"] - before["success"]
    executions = after["execution_count"] - before["execution_count"]
    if requests <= 0 or executions <= 0:
        return None
    return {
        "queue_ms": (after["queue_ns"] - before["queue_ns"]) / requests / 1e6,
        "compute_ms": (after["compute_ns"] - before["compute_ns"]) / requests / 1e6,
        "batch": (after["inference_count"] - before["inference_count"]) / executions,
    }


# -- one cell ------------------------------------------------------------------------------------------------

async def measure(client: Call, label: str, protocol: str, batch: int, *, concurrency: int | None = None,
                  rate: float | None = None, seconds: float = 3.0, warmup_s: float = 1.0,
                  stats_url: str | None = None, stats_model: str | None = None) -> Cell:
    """Run one closed-loop (``concurrency``) or open-loop (``rate``) cell, with the server-side split."""
    before = await read_statistics(stats_url, stats_model) if stats_url and stats_model else None
    if rate:
        measured = await open_loop(client, rate, seconds, warmup_s)
    else:
        measured = await closed_loop(client, concurrency or 1, seconds, warmup_s)
    after = await read_statistics(stats_url, stats_model) if before else None
    return make_cell(label, protocol, measured, batch, concurrency, rate, server_split(before, after))


# -- the command -------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("model", help="model to load")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="HTTP base URL (also read for statistics)")
    parser.add_argument("--grpc-url", default="127.0.0.1:8001", help="gRPC host:port")
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=["http-binary"],
                        help="transports to measure, one after another (default http-binary; handle: "
                             "cluster.client's, serve-handle: the model deployment's Serve handle)")
    parser.add_argument("--concurrency", type=positive(int), nargs="+", default=[1, 4, 16, 64],
                        help="closed-loop concurrency sweep (default 1 4 16 64)")
    parser.add_argument("--rate", type=positive(float), help="open loop at this many requests/s instead of the sweep")
    parser.add_argument("--seconds", type=positive(float), default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument("--warmup", type=non_negative(float), default=1.0, help="unmeasured seconds before each cell (default 1)")
    parser.add_argument("--batch", type=positive(int), default=1, help="rows per request where the batch dim is -1")
    parser.add_argument("--shape", action="append", default=[], metavar="[INPUT:]D1,D2,...",
                        help="an input's dims after the batch dim (for -1 dims; no INPUT: every input); repeat "
                             "per input, e.g. --shape 1048576")
    parser.add_argument("--input-bytes", type=positive(int),
                        help="make each input this many bytes through its one variable dim, e.g. 4194304")
    parser.add_argument("--application", default="ric", help="Serve application of the model (handles)")
    parser.add_argument("--grpc-application", help="gRPC 'application' metadata (Serve needs it when a cluster "
                                                   "runs several applications)")
    parser.add_argument("--address", help="Ray cluster to join for the handle protocols (default: the running "
                                          "ric serve's, as cluster.client.connect finds it)")
    parser.add_argument("--json", dest="json_path", help="also write the cells to this JSON file")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw throughput and p50/p99 latency over time, "
                                                           "cell after cell, to this PNG (needs matplotlib)")


async def run(args) -> list[Cell]:
    grpc_application = args.grpc_application
    cells = []
    for protocol in args.protocol:
        try:
            metadata = await fetch_metadata(protocol, args.model, args.url, args.grpc_url, args.application,
                                            grpc_application)
        except Exception as exc:  # no server, unknown model, a peer without metadata: nothing to measure
            raise RuntimeError(f"cannot describe model '{args.model}' over {protocol}: {exc}") from None
        try:
            shapes = dict(parse_shape(text) for text in args.shape)
            tensors = request_tensors(metadata, args.batch, shapes=shapes, input_bytes=args.input_bytes)
        except ValueError as exc:
            raise RuntimeError(f"model '{args.model}': {exc}") from None
        loads = [(None, args.rate)] if args.rate else [(c, None) for c in args.concurrency]
        client = make_client(protocol, args.model, tensors, output_names(metadata), args.url, args.grpc_url,
                             args.application, grpc_application, max(args.concurrency))
        try:
            for concurrency, rate in loads:
                cell = await measure(client, f"{args.model} {protocol}", protocol, args.batch,
                                     concurrency=concurrency, rate=rate, seconds=args.seconds,
                                     warmup_s=args.warmup, stats_url=args.url, stats_model=args.model)
                print(cell.row(), flush=True)
                cells.append(cell)
        finally:
            await client.close()
    return cells


def main(args) -> int:
    """Run ``ric perf``; exit status 1 when any request failed."""
    if {"handle", "serve-handle"} & set(args.protocol):
        from cluster.client import connect

        try:
            connect(args.address, args.application)
        except ConnectionError as exc:
            print(f"ric perf: {exc}", file=sys.stderr)
            return 2
    try:
        cells = asyncio.run(run(args))
    except RuntimeError as exc:  # the server could not describe the model: nothing to measure
        print(f"ric perf: {exc}", file=sys.stderr)
        return 2
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump([cell.to_dict() for cell in cells], f, indent=1)
    if args.plot:
        from cluster.cli import perf_plot

        load = lambda cell: f"c={cell.concurrency}" if cell.concurrency else f"{cell.rate:g}/s"  # noqa: E731
        try:
            perf_plot.plot(args.plot, [(f"{cell.label} {load(cell)}", cell.measured.finished_s,
                                        cell.measured.latencies_ms, cell.seconds) for cell in cells])
        except RuntimeError as exc:
            print(f"ric perf: {exc}", file=sys.stderr)
            return 2
    return 1 if any(cell.errors for cell in cells) else 0
