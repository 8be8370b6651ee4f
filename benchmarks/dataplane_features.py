"""Streaming, sequences and ensembles side by side: ric and real Triton 2.51, one repository, perf_analyzer.

    .venv/bin/python benchmarks/dataplane_features.py [--rounds 2] [--interval-ms 3000] [--write-docs]

The data plane benchmark (benchmarks/dataplane.py) measures unary add_sub with our own generator; this one
measures what else a Triton user runs, with Triton's own client (perf_analyzer, as
benchmarks/install_perf_analyzer.sh installs it) against both servers, one at a time, rounds alternating:
  add_sub     the same Python model as dataplane.py, HTTP and gRPC, c=16 (perf_analyzer's cross-check of
              that run's cells)
  pipeline    an ensemble of two add_sub steps (platform "ensemble"), HTTP, c=16
  accumulate  a sequence Python model (sequence_batching, a START control; the sum of the sequence so
              far), HTTP, 8 sequences in flight of ~8 requests each
  repeat      a decoupled Python model answering each request with 8 responses, gRPC streaming
              (ModelStreamInfer), c=4; latency to the first response, as perf_analyzer counts it
Each cell: perf_analyzer until three windows of --interval-ms agree (at most 10), with the server tree's CPU
read around the run; a run that fails or hangs is run once more. Writes every value as JSON to --out;
--write-docs puts the Markdown section into docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import perf_analyzer, report
from benchmarks.dataplane import cpu_between, environment, interrupt, start, tree_cpu
from benchmarks.dataplane_report import RIC, TRITON, fmt
from benchmarks.triton_peer import TRITON_VENV, triton_binary, write_add_sub_repository

DOCS = ROOT / "docs" / "benchmarks.md"
SOURCE = "benchmarks/dataplane_features.py"
SERVERS = (TRITON, RIC)

REPEAT = ('''\
# A decoupled Python model: each request answered with 8 responses (OUT = IN + i), then the final flag.
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
''', '''\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            for i in range(8):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", (value + i).astype(np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
''')
ACCUMULATE = ('''\
# A sequence Python model: OUT is the sum of the sequence's INs so far (START begins a new sum).
backend: "python"
max_batch_size: 8
input [ { name: "IN", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "OUT", data_type: TYPE_INT32, dims: [ 1 ] } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  control_input [ { name: "START", control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] } ]
}
''', '''\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            key = request.correlation_id()
            value = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy().reshape(1, 1)
            started = int(pb_utils.get_input_tensor_by_name(request, "START").as_numpy().sum())
            # int32 arithmetic wraps alike in numpy 1 (Triton's stub) and 2 (ours) on random inputs
            self.sums[key] = value if started else self.sums.get(key, np.zeros((1, 1), np.int32)) + value
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", self.sums[key].astype(np.int32))]))
        return responses
''')
PIPELINE = ('''\
# An ensemble of two add_sub steps: (a + b, a - b), then their sum and difference, (2a, 2b).
platform: "ensemble"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
        { name: "INPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ 16 ] },
         { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ 16 ] } ]
ensemble_scheduling { step [
  { model_name: "add_sub" model_version: -1
    input_map { key: "INPUT0" value: "INPUT0" } input_map { key: "INPUT1" value: "INPUT1" }
    output_map { key: "OUTPUT0" value: "sum" } output_map { key: "OUTPUT1" value: "difference" } },
  { model_name: "add_sub" model_version: -1
    input_map { key: "INPUT0" value: "sum" } input_map { key: "INPUT1" value: "difference" }
    output_map { key: "OUTPUT0" value: "OUTPUT0" } output_map { key: "OUTPUT1" value: "OUTPUT1" } } ] }
''', None)

#: (label, model, protocol, concurrency, extra perf_analyzer arguments)
CELLS = (
    ("add_sub, HTTP", "add_sub", "http", 16, ()),
    ("add_sub, gRPC", "add_sub", "grpc", 16, ()),
    ("ensemble of 2 add_sub, HTTP", "pipeline", "http", 16, ()),
    ("sequences, HTTP (8 in flight)", "accumulate", "http", 8, ("--sequence-length", "8")),
    ("decoupled, 8 responses, gRPC stream", "repeat", "grpc", 4, ("--streaming",)),
)


def write_repository(root: Path) -> Path:
    write_add_sub_repository(root)
    for name, (config, code) in {"repeat": REPEAT, "accumulate": ACCUMULATE, "pipeline": PIPELINE}.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n{config}')
        if code is not None:
            (root / name / "1" / "model.py").write_text(code)
    return root


def measure(running, cell: tuple, interval_ms: int) -> dict:
    """One perf_analyzer run (its own warm-up and windows) with the server tree's CPU read around it."""
    label, model, protocol, concurrency, extra = cell
    url = running.url.removeprefix("http://") if protocol == "http" else running.grpc
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = Path(tmp) / "report.csv"
        command = perf_analyzer.command(model, url, protocol, concurrency, interval_ms) + [*extra, "-f", str(csv_path)]
        timeout_s = 20 * interval_ms / 1000 + 60
        before, started = tree_cpu(running.pid), time.monotonic()
        try:
            done = perf_analyzer.run(command, timeout_s=timeout_s)
        except subprocess.TimeoutExpired:
            done = None
        cpu_s, window = cpu_between(before, tree_cpu(running.pid)), time.monotonic() - started
        found = {"cell": label, "model": model, "protocol": protocol, "concurrency": concurrency,
                 "cpu_cores": cpu_s / window}
        if done is None:
            return {**found, "error": f"perf_analyzer did not finish within {timeout_s:g} s"}
        if done.returncode != 0 or not csv_path.exists():
            return {**found, "error": (done.stdout + done.stderr)[-800:]}
        with open(csv_path) as f:
            row = next(csv.DictReader(f))
    rate = float(row["Inferences/Second"])
    responses = row.get("Response Throughput")
    return {**found, "inferences_per_s": rate, "responses_per_s": float(responses) if responses else None,
            "p50_ms": float(row["p50 latency"]) / 1000, "p99_ms": float(row["p99 latency"]) / 1000,
            "cpu_s_per_1k": 1000 * found["cpu_cores"] / rate if rate else None}


def run_round(name: str, round_: int, repository: Path, workdir: Path, interval_ms: int) -> list[dict]:
    cells = []
    try:
        with start(name, repository, workdir) as running:
            for cell in CELLS:
                measured = {"server": name, "round": round_, **measure(running, cell, interval_ms)}
                if "error" in measured:  # once more: a run that hangs or cannot settle is not the server's rate
                    print(f"[round {round_}] {name:<12} {describe(measured)}; again", flush=True)
                    measured = {"server": name, "round": round_, **measure(running, cell, interval_ms)}
                print(f"[round {round_}] {name:<12} {describe(measured)}", flush=True)
                cells.append(measured)
    except Exception as exc:  # noqa: BLE001 (a server that fails fails its own cells)
        error = f"{type(exc).__name__}: {exc}"[:1500]
        print(f"[round {round_}] {name}: {error}", flush=True)
        done = {c["cell"] for c in cells}
        cells += [{"server": name, "round": round_, "cell": cell[0], "error": error} for cell in CELLS
                  if cell[0] not in done]
    return cells


def describe(cell: dict) -> str:
    if "error" in cell:
        return f"{cell['cell']}: FAILED: {cell['error'][-300:]}"
    responses = f" ({cell['responses_per_s']:.0f} responses/s)" if cell.get("responses_per_s") else ""
    return (f"{cell['cell']}: {cell['inferences_per_s']:.0f} infer/s{responses}, p50 {cell['p50_ms']:.2f} ms, "
            f"p99 {cell['p99_ms']:.2f} ms, server {cell['cpu_cores']:.2f} cores")


def median_cell(cells: list[dict], server: str, label: str) -> dict | None:
    """The median round by throughput (of an even count, the faster of the middle two), with every round's
    throughput; None if no round measured it."""
    measured = sorted((c for c in cells if c["server"] == server and c["cell"] == label and "error" not in c),
                      key=lambda c: c["inferences_per_s"])
    if not measured:
        return None
    return {**measured[len(measured) // 2], "rounds": [c["inferences_per_s"] for c in measured],
            "median_rate": statistics.median(c["inferences_per_s"] for c in measured)}


def markdown(results: dict) -> str:
    env, cells = results["environment"], results["cells"]
    lines = ["## Streaming, sequences and ensembles: ric vs Triton 2.51 (perf_analyzer)", "",
             f"`{env['command']}` on {env['date']} ({env['commit']}): {env['machine']}; {env['platform']}, "
             f"Python {env['python']}. perf_analyzer 2.51 (tritonclient 2.51.0's binary) against each server in "
             f"turn, {results['settings']['rounds']} round(s) alternating; windows of "
             f"{results['settings']['interval_ms']} ms until three agree. One Triton-form repository of Python "
             "models (benchmarks/dataplane_features.py): add_sub, an ensemble of two add_sub steps, a sequence "
             "model, a decoupled model of 8 responses. infer/s: the median over the rounds (each round's in "
             "brackets); p50 / p99: the median round's (for the decoupled model, to the first response); server "
             "cores: its process tree's CPU over the perf_analyzer run, per second.", "",
             *report.header("cell", "server", "infer/s (rounds)", "p50", "p99", "server cores",
                            "CPU-s / 1k", "/ Triton"),
             ]
    for label, *_ in CELLS:
        triton = median_cell(cells, TRITON, label)
        for server in SERVERS:
            cell = median_cell(cells, server, label)
            if cell is None:
                failed = next((c for c in cells if c["server"] == server and c["cell"] == label), {})
                lines.append(report.row(label, server, f"failed: {failed.get('error', 'not run')[-120:]!r}",
                                        "", "", "", "", ""))
                continue
            rounds = " / ".join(f"{r:.0f}" for r in cell["rounds"])
            responses = f", {cell['responses_per_s']:.0f} responses/s" if cell.get("responses_per_s") else ""
            versus = "—" if server == TRITON else report.fmt_ratio(report.ratio(cell["median_rate"],
                                                                                 triton and triton["median_rate"]))
            lines.append(report.row(label, server, f"{cell['median_rate']:.0f} ({rounds}){responses}",
                                    f"{cell['p50_ms']:.2f} ms", f"{cell['p99_ms']:.2f} ms",
                                    f"{cell['cpu_cores']:.2f}", fmt(cell["cpu_s_per_1k"], ".2f"), versus))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both servers (default 2)")
    parser.add_argument("--interval-ms", type=int, default=3000, help="perf_analyzer's window (default 3000)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-dataplane-features.json"),
                        help="JSON file for every raw value")
    parser.add_argument("--write-docs", action="store_true", help="also put the section into docs/benchmarks.md")
    args = parser.parse_args(argv)
    if triton_binary() is None or not perf_analyzer.available():
        print(f"dataplane_features: needs Triton in {TRITON_VENV} and perf_analyzer: run bash "
              "benchmarks/install_triton.sh and bash benchmarks/install_perf_analyzer.sh", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, interrupt)
    env = environment(argv)
    env["command"] = env["command"].replace("benchmarks/dataplane.py", SOURCE)
    results = {"environment": env, "settings": {"rounds": args.rounds, "interval_ms": args.interval_ms},
               "cells": []}
    with tempfile.TemporaryDirectory(prefix="ric-features-") as tmp:
        workdir = Path(tmp)
        repository = write_repository(workdir / "repository")
        for round_ in range(1, args.rounds + 1):
            for name in SERVERS:
                results["cells"] += run_round(name, round_, repository, workdir, args.interval_ms)
    Path(args.out).write_text(json.dumps(results, indent=1))
    section = markdown(results)
    print()
    print(section)
    if args.write_docs:
        report.write_section(DOCS, section, SOURCE)
        print(f"wrote the section into {DOCS}")
    return 1 if any("error" in c for c in results["cells"]) else 0


if __name__ == "__main__":
    sys.exit(main())
