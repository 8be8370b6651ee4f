"""The README's serve command, as a user runs it: ``ric serve`` starts a local Ray with the fastest ingress,
serves the example repository over HTTP and gRPC, prints its URLs, and SIGTERM (as Ctrl-C) shuts everything
down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import requests
import tritonclient.grpc as grpcclient

from tests.integration.conftest import free_port, wait_for


def test_ric_serve_serves_the_example_repository_until_sigterm():
    http_port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "ric"), "serve", "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--num-cpus", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_for(lambda: any(line.startswith("ric: serving") for line in lines) or process.poll() is not None,
                 timeout_s=240, what="ric serve to say it is serving")
        assert requests.get(f"{url}/v2/health/ready", timeout=30).ok
        body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["ray"]}]}
        response = requests.post(f"{url}/v2/models/text_stats/infer", json=body, timeout=30)
        assert response.status_code == 200 and response.json()["outputs"][0]["data"] == ["RAY"]
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        x = grpcclient.InferInput("INPUT__0", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        assert client.infer("linear_torch", [x]).as_numpy("OUTPUT__0").shape == (1, 2)
    finally:
        process.send_signal(signal.SIGTERM)  # what docker stop and Kubernetes send; Ctrl-C takes the same path
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=30)
    output = "".join(lines)
    assert process.returncode == 0, output[-3000:]
    assert f"ric: serving example at {url}/v2 and gRPC 127.0.0.1:{grpc_port}" in output
    assert "ingress: haproxy" in output
    assert "ric: shutting down" in output
