"""What metrics and tracing cost the request path, side by side in one run.

Starts `ric serve` on the example repository (HAProxy ingress, CPU models colocated: the README's quick
start) and drives the tiny model `simple` with `ric perf`'s closed loop (binary HTTP, concurrency 16) in
interleaved rounds of four cells, so that the machine's drift falls on every cell alike:
  baseline          nothing scrapes the metrics; tracing OFF
  metrics scraped   a scraper reads :metrics-port/metrics every second (Prometheus's default is 15 s)
  trace rate 1000   TIMESTAMPS, one request in 1,000 traced and written
  trace rate 1      TIMESTAMPS, every request traced and written
Prints a Markdown table (median req/s over the rounds and the ratio to the baseline); `--out FILE` also
writes it.

    python benchmarks/observability.py --seconds 5 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODES = ("baseline", "metrics scraped every 1 s", "trace rate 1000", "trace rate 1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(folder: Path, repository: str = "example", extra: list[str] = ()
                 ) -> tuple[subprocess.Popen, str, int, str]:
    """`ric serve` on ``repository`` (default the example repository) with HOME=``folder`` and ``extra``
    arguments: the process, the HTTP base URL, the metrics port and the gRPC target."""
    http, grpc, metrics = free_port(), free_port(), free_port()
    ric = Path(sys.executable).parent / "ric"
    process = subprocess.Popen([str(ric), "serve", repository, "--no-dashboard", "--http-port", str(http), "--grpc-port",
                                str(grpc), "--metrics-port", str(metrics), "--trace-dir", str(folder / "traces"), *extra],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "HOME": str(folder)})
    for line in process.stdout:
        if line.startswith("ric: serving") or process.poll() is not None:
            break
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    return process, f"http://127.0.0.1:{http}", metrics, f"127.0.0.1:{grpc}"


def set_tracing(url: str, rate: str | None) -> None:
    body = ({"trace_level": ["OFF"]} if rate is None else
            {"trace_level": ["TIMESTAMPS"], "trace_rate": rate, "trace_count": "-1", "trace_file": "bench.jsonl"})
    response = requests.post(f"{url}/v2/trace/setting", json=body, timeout=30)
    response.raise_for_status()
    time.sleep(1.0)  # every replica has the settings (each holds a watch on them)


async def measure(url: str, model: str, seconds: float, concurrency: int):
    """One closed-loop cell of `ric perf` on ``model`` over binary HTTP: its ``Measured``."""
    from cluster.cli import perf
    from cluster.cli.perf_clients import fetch_metadata, make_client, output_names, request_tensors

    metadata = await fetch_metadata("http-binary", model, url, "", None)
    client = make_client("http-binary", model, request_tensors(metadata), output_names(metadata), url, "",
                         None, None, concurrency)
    try:
        return await perf.closed_loop(client, concurrency, seconds)
    finally:
        await client.close()


async def cell(url: str, seconds: float, concurrency: int) -> float:
    measured = await measure(url, "simple", seconds, concurrency)
    return len(measured.latencies_ms) / measured.seconds


def scraping(metrics_port: int, stop: threading.Event) -> None:
    while not stop.is_set():
        requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).raise_for_status()
        stop.wait(1.0)


def cell_arguments(description: str, rounds: int) -> argparse.Namespace:
    """The command line of a benchmark of interleaved closed-loop cells: seconds, rounds, concurrency, out."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", help="also write the table as Markdown to this file")
    return parser.parse_args()


def print_table(lines: list[str], out: str | None) -> None:
    """Print a benchmark's Markdown lines, and write them to ``out`` too if given."""
    print("\n".join(lines))
    if out:
        Path(out).write_text("\n".join(lines) + "\n")


def main() -> None:
    args = cell_arguments(__doc__, rounds=5)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        process, url, metrics_port, _ = start_server(Path(folder))
        try:
            asyncio.run(cell(url, 2.0, args.concurrency))  # warm up
            for _ in range(args.rounds):
                for mode in MODES:
                    set_tracing(url, {"trace rate 1000": "1000", "trace rate 1": "1"}.get(mode))
                    stop = threading.Event()
                    scraper = threading.Thread(target=scraping, args=(metrics_port, stop), daemon=True)
                    if mode.startswith("metrics"):
                        scraper.start()
                    rates[mode].append(asyncio.run(cell(url, args.seconds, args.concurrency)))
                    stop.set()
                    if scraper.is_alive():
                        scraper.join()
            set_tracing(url, None)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=120)
    base = statistics.median(rates["baseline"])
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; ric serve (HAProxy ingress, colocated), "
             f"`simple` over binary HTTP, c={args.concurrency}, {args.seconds:.0f} s per cell, {args.rounds} "
             "interleaved rounds", "", "| cell | req/s (median) | each round | ratio to baseline |",
             "|---|---|---|---|"]
    for mode in MODES:
        median = statistics.median(rates[mode])
        lines.append(f"| {mode} | {median:.0f} | {', '.join(f'{r:.0f}' for r in rates[mode])} | "
                     f"{median / base:.2f}x |")
    print_table(lines, args.out)


if __name__ == "__main__":
    main()
