"""``ric perf``'s own input: bad numbers are refused by name, an unreachable server ends the run cleanly."""

from __future__ import annotations

import socket
import subprocess
import sys

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
