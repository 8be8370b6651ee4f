"""Integration tier: one local Ray + Serve per test module, on 127.0.0.1, with the resources it needs; and
``ric serve`` started as a user starts it (``start_ric``)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
import requests
from ray import serve

from cluster.app import AppArgs, build
from cluster.names import APP_NAME
from cluster.protocol.grpc_service import SERVICER_FUNCTION
from tests.conftest import start_local_ray


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Endpoints:
    http: str  # base URL
    grpc: str  # host:port
    metrics: str = ""  # the metrics URL where it is not the HTTP port's /metrics (Triton's :8002)

    @property
    def metrics_url(self) -> str:
        return self.metrics or f"{self.http}/metrics"


@contextmanager
def serve_repository(repository, num_cpus: float = 4, num_gpus: float = 0, proxied: bool = False,
                     **app_args) -> Iterator[Endpoints]:
    """Start Ray and Serve, serve a repository, yield its endpoints; shut everything down after. The
    endpoints are the ingress replicas' own listeners (as ``ric serve``'s); with ``proxied`` they are Serve's
    HTTP and gRPC proxies (as ``serve deploy``'s)."""
    start_local_ray(num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1", include_dashboard=False,
                    log_to_driver=False)
    try:
        http_port, grpc_port = free_port(), free_port()
        if proxied:
            serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                        grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]})
        else:
            serve.start(proxy_location="Disabled")
            app_args = {"http_port": http_port, "grpc_port": grpc_port, **app_args}
        app = build(AppArgs(repository=str(repository), **app_args))
        serve.run_many([serve.RunTarget(app, name=APP_NAME, route_prefix="/", external_scaler_enabled=True)],
                       wait_for_applications_running=False)
        wait_for(lambda: _app_status() in ("RUNNING", "DEPLOY_FAILED"), timeout_s=240,
                 what=lambda: f"the application to start: {serve.status().applications.get(APP_NAME)}")
        assert _app_status() == "RUNNING", serve.status().applications[APP_NAME]
        yield Endpoints(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    finally:
        serve.shutdown()
        ray.shutdown()


@contextmanager
def moto_s3(port: int | None = None, cache_dir: str | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    """A real S3-compatible server over HTTP (moto's standalone server) on 127.0.0.1, with the AWS settings
    boto3 reads in the environment for the time it runs (started before Ray, Ray's workers inherit them);
    yields the server process and its port."""
    port = port or free_port()
    server = start_moto(port)
    settings = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                **({"RIC_CACHE_DIR": cache_dir} if cache_dir else {})}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield server, port
    finally:
        stop_moto(server)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_moto(port: int) -> subprocess.Popen:
    """A moto S3 server on ``port``, once it answers (its buckets live in its memory only)."""
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: requests.get(f"http://127.0.0.1:{port}", timeout=2).ok, timeout_s=30, what="moto server")
    return server


def stop_moto(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        server.wait(timeout=30)


def _app_status() -> str | None:
    app = serve.status().applications.get(APP_NAME)
    return app.status if app else None


def wait_for(check: Callable[[], bool], timeout_s: float = 60, what: str | Callable[[], str] = "condition") -> None:
    """Poll ``check`` until it is true; fail after ``timeout_s`` saying what it waited for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what() if callable(what) else what}")


def settled(read: Callable[[], Any], pause_s: float = 1.0, attempts: int = 20) -> Any:
    """A value that stopped changing: statistics of earlier requests are reported shortly after them."""
    last = read()
    for _ in range(attempts):
        time.sleep(pause_s)
        current = read()
        if current == last:
            return current
        last = current
    raise AssertionError("statistics kept changing")


#: The venv's scripts (``ric``), which a user runs by path.
BIN = Path(sys.executable).parent


@dataclass
class RicServe:
    """A ``ric serve`` process with its output collected as it comes."""

    process: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_serving(self) -> None:
        wait_for(lambda: "ric: serving" in self.output or self.process.poll() is not None, timeout_s=240,
                 what="ric serve to say it is serving")
        assert "ric: serving" in self.output, self.output[-3000:]

    def stop_group(self) -> float:
        """SIGTERM to the whole process group; wait (bounded) for ric serve to exit."""
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise
        return float(re.search(r"ric: stopped in ([\d.]+) s", self.output).group(1))


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """What a new shell has: a PATH without the venv, a HOME; nothing of Ray's or the tests'."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), **extra}


def start_ric(home: Path, *args: str, http_port: int | None = None, grpc_port: int | None = None) -> RicServe:
    http_port, grpc_port, metrics_port = http_port or free_port(), grpc_port or free_port(), free_port()
    process = subprocess.Popen(
        [str(BIN / "ric"), "serve", *args, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
         "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(home), start_new_session=True,
    )
    server = RicServe(process, http_port, grpc_port, metrics_port)
    threading.Thread(target=lambda: server.lines.extend(process.stdout), daemon=True).start()
    return server


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A HOME of its own for a module's ``ric serve`` and the clean shells that reach it."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def dashboard_port() -> int:
    """A free port for a module's ``ric serve --dashboard-port``."""
    return free_port()


@contextmanager
def ric_serving(home: Path, *args: str) -> Iterator[RicServe]:
    """``start_ric`` until it says it serves; its whole process group stopped afterwards, if still running."""
    server = start_ric(home, *args)
    try:
        server.wait_serving()
        yield server
    finally:
        if server.process.poll() is None:
            server.stop_group()


def assert_huge_lengths_refused(http_port: int, base_url: str) -> None:
    """A Content-Length past 2^64 (read whole by one HTTP parser, wrapped by another: how requests are
    smuggled past a proxy) or of 19 digits answers 413 JSON before anything is read; the server answers on."""
    for length in ("18446744073709551617", "1000000000000000000"):
        with socket.create_connection(("127.0.0.1", http_port), timeout=30) as client:
            client.sendall(f"POST /v2/models/simple/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}"
                           "\r\n\r\n{}".encode())
            answer = client.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413"), answer
        body = answer.partition(b"\r\n\r\n")[2].decode()
        assert json.JSONDecoder().raw_decode(body)[0] == {"error": "request body length is too large"}, answer
    assert requests.get(f"{base_url}/v2/health/ready", timeout=30).ok
