"""Triton's perf_analyzer, as installed by benchmarks/install_perf_analyzer.sh, run and read back."""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
from pathlib import Path

VENV = Path(__file__).resolve().parents[1] / ".venv-perf-analyzer"
BINARY = VENV / "bin" / "perf_analyzer"


def cuda_runtime_dir() -> str | None:
    """Where libcudart.so.12 lies (perf_analyzer links it; no GPU is needed)."""
    found = sorted(VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"))
    return str(found[0].parent) if found else None


def available() -> bool:
    return BINARY.exists() and cuda_runtime_dir() is not None


def command(model: str, url: str, protocol: str, concurrency: int, interval_ms: int = 3000,
            json_tensors: bool = False) -> list[str]:
    """perf_analyzer's arguments: it measures until three windows in a row agree within 100%, at most 10."""
    args = [str(BINARY), "-m", model, "-u", url, "-i", protocol, "--concurrency-range", str(concurrency),
            "--measurement-interval", str(interval_ms), "--stability-percentage", "100", "--max-trials", "10"]
    if json_tensors:
        args += ["--input-tensor-format", "json", "--output-tensor-format", "json"]
    return args


def run(args: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "LD_LIBRARY_PATH": cuda_runtime_dir() or ""}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, env=env)


def measure(model: str, url: str, concurrency: int, json_tensors: bool = False, protocol: str = "http") -> dict:
    """One perf_analyzer measurement: inferences/s and latency percentiles (ms), or the error it printed."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        done = run(command(model, url, protocol, concurrency, json_tensors=json_tensors) + ["-f", str(report)])
        if done.returncode != 0 or not report.exists():
            return {"error": (done.stdout + done.stderr)[-600:]}
        with open(report) as f:
            row = next(csv.DictReader(f))
    return {
        "inferences_per_s": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
    }
