"""``ric perf``'s own input: bad numbers are refused by name, an unreachable server ends the run cleanly."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest


def ric_perf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.cli", "perf", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "0"], "--concurrency: '0' is not a number > 0"),
    (["--rate", "-3"], "--rate: '-3' is not a number > 0"),
    (["--seconds", "x"], "--seconds: 'x' is not a number > 0"),
    (["--warmup", "-1"], "--warmup: '-1' is not a number >= 0"),
])
def test_bad_numbers_are_refused(args, message):
    done = ric_perf("m", *args)
    assert done.returncode == 2 and message in done.stderr


def test_an_unreachable_server_ends_the_run_with_a_clear_message():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket is closed
    done = ric_perf("m", "--url", f"http://127.0.0.1:{port}", "--seconds", "1")
    assert done.returncode == 2
    assert "ric perf: cannot describe model 'm' over http-binary" in done.stderr and "Traceback" not in done.stderr


def test_the_plot_bins_requests_by_when_they_finished():
    from cluster.cli.perf_plot import timeline

    starts, rates, p50, p99 = timeline([0.05, 0.15, 0.16, 0.95], [1.0, 2.0, 4.0, 8.0], seconds=1.0)
    assert list(starts) == pytest.approx([0.1 * i for i in range(10)])  # a tenth of a short cell
    assert list(rates[:2]) == [10.0, 20.0] and rates[9] == 10.0 and rates[5] == 0
    assert p50[1] == 3.0 and p99[0] == 1.0
    assert np.isnan(p50[5])


IDENTITY = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}]}


def test_shapes_and_sizes_come_from_the_command_line():
    from cluster.cli.perf_clients import parse_shape, request_tensors

    assert request_tensors(IDENTITY)["INPUT0"].shape == (1, 1)
    assert request_tensors(IDENTITY, 2, shapes=dict([parse_shape("1048576")]))["INPUT0"].shape == (2, 1048576)
    assert request_tensors(IDENTITY, shapes=dict([parse_shape("INPUT0:7")]))["INPUT0"].shape == (1, 7)
    tensor = request_tensors(IDENTITY, input_bytes=4 << 20)["INPUT0"]
    assert tensor.shape == (1, 1 << 20) and tensor.nbytes == 4 << 20
    fixed = {"inputs": [{"name": "X", "datatype": "INT32", "shape": [-1, 16]}]}
    with pytest.raises(ValueError, match=r"takes shape \[16\]"):
        request_tensors(fixed, shapes={None: [8]})
    with pytest.raises(ValueError, match="one variable dimension"):
        request_tensors(fixed, input_bytes=64)
    for bad in ("x", "0", "A:"):
        with pytest.raises(ValueError, match="--shape takes"):
            parse_shape(bad)
