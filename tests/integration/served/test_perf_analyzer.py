"""Triton's perf_analyzer, unchanged, against our HTTP and gRPC endpoints: a few seconds each.

``make test`` installs it (benchmarks/install_perf_analyzer.sh); without it these tests skip and say why.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.conftest import REPO_ROOT

VENV = REPO_ROOT / ".venv-perf-analyzer"
PERF_ANALYZER = VENV / "bin" / "perf_analyzer"


def cuda_runtime_dir() -> str | None:
    found = sorted(VENV.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"))
    return str(found[0].parent) if found else None


pytestmark = pytest.mark.skipif(
    not PERF_ANALYZER.exists() or cuda_runtime_dir() is None,
    reason="perf_analyzer is not installed: run benchmarks/install_perf_analyzer.sh (make test does)",
)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_us(endpoints, protocol):
    url = endpoints.http.removeprefix("http://") if protocol == "http" else endpoints.grpc
    env = {**os.environ, "LD_LIBRARY_PATH": cuda_runtime_dir()}
    done = subprocess.run(
        [str(PERF_ANALYZER), "-m", "simple", "-u", url, "-i", protocol, "--concurrency-range", "2",
         "--measurement-interval", "1000", "--stability-percentage", "100", "--max-trials", "5"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    output = done.stdout + done.stderr
    if "libb64" in output:
        pytest.skip("perf_analyzer needs libb64-0d from apt")
    assert done.returncode == 0, output[-3000:]
    throughput = float(re.search(r"Throughput: ([\d.]+) infer/sec", output).group(1))
    assert throughput > 0
    server_requests = int(re.search(r"Successful request count: (\d+)", output).group(1))
    assert server_requests > 0  # read from our statistics endpoint
