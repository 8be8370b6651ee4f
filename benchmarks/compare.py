"""The whole comparison in one command; writes its section of docs/benchmarks.md and docs/benchmarks.png.

    make bench            # = python benchmarks/compare.py
    python benchmarks/compare.py --quick --out /tmp/bench.md   # a fast pass that fills every table

Generates the benchmark repository (a tiny MLP 64-256-10, and a batch-friendly MLP 1024-2048-2048-1000
with dynamic batching on and off), then, one after another on this machine:
  1. our server with Serve's default proxy, with HAProxy + throughput-optimized Serve, and with that plus the
     models colocated in the ingress (what `ric serve` runs), each beside a do-nothing Serve deployment (the
     platform floor) on the same Ray (benchmarks/stage.py);
  2. the same models in process through our own onnxruntime backend (the limit);
  3. MLServer serving the same ONNX files, driven by the same client, and perf_analyzer against both.
Every ratio compares cells measured in this one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import peers, perf_analyzer  # noqa: E402

TINY, BIG = (64, 256, 10), (1024, 2048, 2048, 1000)
CONFIGS = {
    "tiny": 'max_batch_size: 64\ndynamic_batching { }\ninstance_group [ { count: 1, kind: KIND_CPU } ]\n'
            'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n',
    "big": "max_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n"
           "instance_group [ { count: 1, kind: KIND_CPU } ]\n",
    "big_nobatch": "max_batch_size: 32\ninstance_group [ { count: 1, kind: KIND_CPU } ]\n",
}


def write_repository(root: Path) -> Path:
    from cluster.repository.examples import onnx_mlp

    files = {"tiny": onnx_mlp(TINY), "big": onnx_mlp(BIG)}
    for name, config in CONFIGS.items():
        (root / name / "1").mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_text(f'platform: "onnxruntime_onnx"\n{config}')
        (root / name / "1" / "model.onnx").write_bytes(files[name.split("_")[0]])
    return root


def run_stage(ingress: str, colocate: bool, repository: Path, workdir: Path, quick: bool, seconds: float) -> list[dict]:
    out = workdir / f"stage-{ingress}-{colocate}.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "stage.py"), "--ingress", ingress,
               "--repository", str(repository), "--out", str(out), "--seconds", str(seconds)]
    command += ["--colocate"] * colocate + ["--quick"] * quick
    subprocess.run(command, check=True, timeout=1800)
    return json.loads(out.read_text())


def run_mlserver(repository: Path, workdir: Path, quick: bool, seconds: float) -> tuple[list[dict], str]:
    import asyncio

    from cluster.cli import perf, perf_clients

    if not peers.install_mlserver():
        return [], ""
    models = {"tiny": (repository / "tiny" / "1" / "model.onnx", TINY[0], TINY[-1])}
    cells = []
    with peers.MLServer(workdir / "mlserver", models) as server:
        async def drive():
            metadata = await perf_clients.fetch_metadata("http-json", "tiny", server.url, "", None)
            tensors = perf_clients.request_tensors(metadata)
            names = perf_clients.output_names(metadata)
            client = perf_clients.HttpClient(server.url, "tiny", tensors, names, binary=False)
            try:
                for concurrency in (1, 16):
                    cell = await perf.measure(client, "MLServer tiny", "http-json", 1, concurrency=concurrency,
                                              seconds=1.0 if quick else seconds, warmup_s=0.5 if quick else 1.0)
                    print(f"[mlserver] {cell.row()}", flush=True)
                    cells.append({"group": "mlserver", "model": "tiny", **cell.to_dict()})
            finally:
                await client.close()

        asyncio.run(drive())
        if perf_analyzer.available():
            measured = perf_analyzer.measure("tiny", server.url.removeprefix("http://"), 16, json_tensors=True)
            cells.append({"group": "perf_analyzer", "ingress": "mlserver", "model": "tiny", "protocol": "http-json",
                          "concurrency": 16, **measured})
            print(f"[mlserver] perf_analyzer {cells[-1]}", flush=True)
    return cells, peers.mlserver_version()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short cells, concurrency 1 and 16 only")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"),
                        help="Markdown file whose generated section is (re)written; the plot goes beside it")
    parser.add_argument("--results", help="also keep every cell as JSON in this file")
    args = parser.parse_args()

    from benchmarks import report

    with tempfile.TemporaryDirectory(prefix="ric-bench-") as tmp:
        workdir = Path(tmp)
        repository = write_repository(workdir / "repository")
        cells = []
        for ingress, colocate in (("default", False), ("haproxy", False), ("haproxy", True)):
            cells += run_stage(ingress, colocate, repository, workdir, args.quick, args.seconds)
        limits = {}
        for model, batch in report.limit_points(cells):
            limits[model, batch] = peers.in_process(repository, model, batch, seconds=1.0 if args.quick else 3.0)
            print(f"[in process] {model} batch {batch}: {limits[model, batch]:.0f} inf/s", flush=True)
        mlserver_cells, mlserver_version = run_mlserver(repository, workdir, args.quick, args.seconds)
        cells += mlserver_cells
    if args.results:
        Path(args.results).write_text(json.dumps({"cells": cells, "limits": [
            {"model": m, "batch": b, "inferences_per_s": v} for (m, b), v in limits.items()]}, indent=1))
    environment = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores ({report.cpu_model()})",
        "python": platform.python_version(),
        "versions": report.versions(mlserver_version),
        "command": "python benchmarks/compare.py" + (" --quick" if args.quick else ""),
    }
    out = Path(args.out)
    plot = out.with_suffix(".png")
    report.plot(cells, plot)
    report.write_section(out, report.render(cells, limits, environment, plot.name))
    print(f"wrote {out} and {plot}")


if __name__ == "__main__":
    main()
