"""Triton's perf_analyzer, unchanged, against our HTTP and gRPC endpoints: a few seconds each.

``make test`` installs it (benchmarks/install_perf_analyzer.sh); without it these tests skip and say why.
"""

from __future__ import annotations

import re

import pytest

from benchmarks import perf_analyzer

pytestmark = pytest.mark.skipif(
    not perf_analyzer.available(),
    reason="perf_analyzer is not installed: run benchmarks/install_perf_analyzer.sh (make test does)",
)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_us(endpoints, protocol):
    url = endpoints.http.removeprefix("http://") if protocol == "http" else endpoints.grpc
    done = perf_analyzer.run(perf_analyzer.command("simple", url, protocol, concurrency=2, interval_ms=1000))
    output = done.stdout + done.stderr
    if "libb64" in output:
        pytest.skip("perf_analyzer needs libb64-0d from apt")
    assert done.returncode == 0, output[-3000:]
    throughput = float(re.search(r"Throughput: ([\d.]+) infer/sec", output).group(1))
    assert throughput > 0
    server_requests = int(re.search(r"Successful request count: (\d+)", output).group(1))
    assert server_requests > 0  # read from our statistics endpoint
