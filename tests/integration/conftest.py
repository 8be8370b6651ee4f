"""Integration tier: one local Ray + Serve per test module, on 127.0.0.1, with the resources it needs."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ray
import requests
from ray import serve

from cluster.app import AppArgs, build
from cluster.cli import APP_NAME
from cluster.grpc_service import SERVICER_FUNCTION


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Endpoints:
    http: str  # base URL
    grpc: str  # host:port


@contextmanager
def serve_repository(repository, num_cpus: float = 4, num_gpus: float = 0, **app_args) -> Iterator[Endpoints]:
    """Start Ray and Serve, serve a repository, yield its endpoints; shut everything down after."""
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1",
             include_dashboard=False, log_to_driver=False)
    try:
        http_port, grpc_port = free_port(), free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                    grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]})
        serve.run(build(AppArgs(repository=str(repository), **app_args)), name=APP_NAME, route_prefix="/")
        yield Endpoints(f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    finally:
        serve.shutdown()
        ray.shutdown()


def wait_for(check: Callable[[], bool], timeout_s: float = 60, what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
