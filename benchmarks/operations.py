"""What operating a live model costs its requests: payload logging at 1 % and 100 %, drift monitoring and a
shadow, each against the same model with none of them, side by side in one run.

Writes a repository of five copies of Triton's tiny `simple` model (INT32 add/sub of two [16] tensors), which
differ only in their operations blocks:
  off            none
  payloads 1%    payload_log { sample_rate: 0.01 }, to a local folder
  payloads 100%  payload_log { sample_rate: 1 }
  drift          drift { reference } (a profile of random data for both inputs and both outputs)
  shadow         shadow { version: 2 } (version 2 is version 1 again; a traffic weight keeps clients on 1)
  shadow 10%     the same with shadow { sample_rate: 0.1 }
serves it with `ric serve` (the README's way: direct listeners, models colocated in the ingress), and drives
each copy with `ric perf`'s closed loop (binary HTTP, concurrency 16) in interleaved rounds, so the machine's
drift falls on every cell alike; after each cell it waits until the payload logs have written what they
took (a writer's backlog would fall on the next cell). Prints a Markdown table (median req/s and p99 over
the rounds, each as a ratio to `off`); `--out FILE` also writes it.

    python benchmarks/operations.py --seconds 5 --rounds 3
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.observability import cell_arguments, measure, print_table, start_server  # noqa: E402
from cluster.repository.examples import onnx_add_sub  # noqa: E402
from deployments.operations.drift import profile_of  # noqa: E402

CELLS = {
    "off": "",
    "payloads 1%": 'parameters { key: "payload_log.sample_rate" value { string_value: "0.01" } }',
    "payloads 100%": 'parameters { key: "payload_log.sample_rate" value { string_value: "1" } }',
    "drift": 'parameters { key: "drift.reference" value { string_value: "reference.json" } }',
    "shadow": ('version_policy { all { } } parameters { key: "traffic.weights" value { string_value: "1:1" } } '
               'parameters { key: "shadow.version" value { string_value: "2" } }'),
    "shadow 10%": ('version_policy { all { } } parameters { key: "traffic.weights" value { string_value: "1:1" } } '
                   'parameters { key: "shadow.version" value { string_value: "2" } } '
                   'parameters { key: "shadow.sample_rate" value { string_value: "0.1" } }'),
}
CONFIG = ('platform: "onnxruntime_onnx" max_batch_size: 8 dynamic_batching { } '
          'input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, '
          '{ name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ] '
          'output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] }, '
          '{ name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] } ] ')


def model_name(cell: str) -> str:
    return "tiny_" + cell.replace(" ", "_").replace("%", "pct")


def write_repository(root: Path) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.integers(-100, 100, (1000, 16)), rng.integers(-100, 100, (1000, 16))
    reference = json.dumps(profile_of({"INPUT0": a, "INPUT1": b, "OUTPUT0": a + b, "OUTPUT1": a - b}))
    for cell, extra in CELLS.items():
        folder = root / model_name(cell)
        for version in (1, 2) if cell.startswith("shadow") else (1,):
            (folder / str(version)).mkdir(parents=True)
            (folder / str(version) / "model.onnx").write_bytes(onnx_add_sub())
        (folder / "config.pbtxt").write_text(CONFIG + extra)
        (folder / "reference.json").write_text(reference)


async def cell(url: str, model: str, seconds: float, concurrency: int) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of one closed-loop cell."""
    measured = await measure(url, model, seconds, concurrency)
    assert not measured.errors, f"{model}: {measured.errors} requests failed"
    return len(measured.latencies_ms) / measured.seconds, float(np.percentile(measured.latencies_ms, 99))


def settle(metrics_port: int, timeout_s: float = 60.0) -> None:
    """Wait until every payload log has written what it accepted, so its writer's backlog does not fall on
    the next cell."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts: dict[str, float] = {}
        for line in requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text.splitlines():
            if line.startswith("ric_payload_records{") and 'outcome="dropped"' not in line:
                outcome = line.split('outcome="')[1].split('"')[0]
                counts[outcome] = counts.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
        if counts.get("logged", 0) == counts.get("written", 0):
            return
        time.sleep(0.5)


def main() -> None:
    args = cell_arguments(__doc__, rounds=3)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in CELLS}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "repository"
        write_repository(root)
        process, url, metrics_port, _ = start_server(Path(folder), str(root),
                                                     ["--payload-log", str(Path(folder) / "payloads")])
        try:
            for name in CELLS:  # warm up
                asyncio.run(cell(url, model_name(name), 1.0, args.concurrency))
            for _ in range(args.rounds):
                for name in CELLS:
                    results[name].append(asyncio.run(cell(url, model_name(name), args.seconds, args.concurrency)))
                    settle(metrics_port)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=120)
        written = sum(1 for path in (Path(folder) / "payloads").rglob("*.jsonl") for _ in path.open())
    base_rate = statistics.median(r for r, _ in results["off"])
    base_p99 = statistics.median(p for _, p in results["off"])
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; ric serve (direct listeners, colocated), "
             f"`simple` (INT32 [16] add/sub, ONNX) over binary HTTP, c={args.concurrency}, {args.seconds:.0f} s per "
             f"cell, {args.rounds} interleaved rounds; {written} payload lines written", "",
             "| cell | req/s (median) | each round | ratio to off | p99 ms (median) | p99 ratio to off |",
             "|---|---|---|---|---|---|"]
    for name, measured in results.items():
        rate, p99 = statistics.median(r for r, _ in measured), statistics.median(p for _, p in measured)
        lines.append(f"| {name} | {rate:.0f} | {', '.join(f'{r:.0f}' for r, _ in measured)} | {rate / base_rate:.2f}x "
                     f"| {p99:.1f} | {p99 / base_p99:.2f}x |")
    print_table(lines, args.out)


if __name__ == "__main__":
    main()
