"""``ric perf``, the benchmark harness's load generator, as a user runs it: a short run on every transport
against the shared server, checked for numbers and no errors (the figures live in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import ray

from cluster.names import APP_NAME


def run_perf(endpoints, tmp_path, *args: str, model: str = "simple") -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "cells.json"
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "perf", model, "--url", endpoints.http, "--grpc-url", endpoints.grpc,
         "--seconds", "1", "--warmup", "0.3", "--json", str(out), *args],
        capture_output=True, text=True, timeout=240,
    )
    return done, json.loads(out.read_text()) if out.exists() else []


def test_closed_loop_on_every_transport(server, endpoints, tmp_path):
    address = ray.get_runtime_context().gcs_address
    done, cells = run_perf(endpoints, tmp_path, "--protocol", "http-json", "http-binary", "grpc", "handle",
                           "--concurrency", "1", "4", "--address", address, "--application", APP_NAME)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [(c["protocol"], c["concurrency"]) for c in cells] == [
        (p, c) for p in ("http-json", "http-binary", "grpc", "handle") for c in (1, 4)]
    for cell in cells:
        assert cell["errors"] == 0 and cell["requests"] > 0
        assert cell["requests_per_s"] > 0 and 0 < cell["p50_ms"] <= cell["p99_ms"]
        assert cell["server"]["compute_ms"] > 0 and cell["server"]["batch"] >= 1  # read from our statistics
    assert "req/s" in done.stdout and "p99" in done.stdout


def test_open_loop_keeps_the_rate_and_plots_it(server, endpoints, tmp_path):
    done, (cell,) = run_perf(endpoints, tmp_path, "--rate", "40", "--plot", str(tmp_path / "over_time.png"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert cell["rate"] == 40 and cell["errors"] == 0
    assert 30 <= cell["requests"] <= 40  # one second at 40/s, every request answered
    assert (tmp_path / "over_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensor_sizes_from_the_command_line(server, endpoints, tmp_path):
    """The example repository's identity model at a size of the user's (the served limit here is 1 MiB)."""
    done, cells = run_perf(endpoints, tmp_path, "--input-bytes", str(512 << 10), "--protocol", "http-binary", "grpc",
                           "--concurrency", "1", model="identity")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [c["protocol"] for c in cells] == ["http-binary", "grpc"]
    assert all(c["errors"] == 0 and c["requests"] > 0 for c in cells)
    done, _ = run_perf(endpoints, tmp_path, "--shape", "16", model="simple")
    assert done.returncode == 0, done.stderr[-3000:]
    done, _ = run_perf(endpoints, tmp_path, "--shape", "8", model="simple")
    assert done.returncode == 2 and "input 'INPUT0' takes shape [16]" in done.stderr


def test_errors_are_counted_and_reported(server, endpoints, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "perf", "no_such_model", "--url", endpoints.http, "--seconds", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "Request for unknown model: 'no_such_model' is not found" in done.stderr
