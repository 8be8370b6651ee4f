"""``ric serve``'s ports, before anything starts: a port of ours that another process holds ends it at once
naming the port and the flag, and the ports Serve would fix for every server are chosen free per server."""

from __future__ import annotations

import os
import socket

import pytest

from cluster.cli import ports
from cluster.cli.main import main

SERVE_VARIABLES = [f"RAY_SERVE_{name}" for name in (
    "FALLBACK_PROXY_HTTP_PORT", "FALLBACK_PROXY_GRPC_PORT", "DIRECT_INGRESS_MIN_HTTP_PORT",
    "DIRECT_INGRESS_MAX_HTTP_PORT", "DIRECT_INGRESS_MIN_GRPC_PORT", "DIRECT_INGRESS_MAX_GRPC_PORT")]


@pytest.fixture
def listening():
    """Listening sockets on ports of the test's choosing (0: any free one); closed after the test."""
    held = []

    def listen(port: int = 0, host: str = "127.0.0.1") -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past a Ray that just stopped
        sock.bind((host, port))
        sock.listen()
        held.append(sock)
        return sock.getsockname()[1]

    yield listen
    for sock in held:
        sock.close()


def test_a_taken_port_of_ours_ends_ric_serve_at_once_naming_the_port_and_the_flag(listening, capsys):
    http, grpc, dashboard = listening(), listening(), listening()
    code = main(["serve", "--http-port", str(http), "--grpc-port", str(grpc), "--dashboard-port", str(dashboard),
                 "--metrics-port", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"ric serve: port {http} on 127.0.0.1 (HTTP) is taken by another process: choose another --http-port" in err
    assert f"port {grpc} on 127.0.0.1 (gRPC) is taken by another process: choose another --grpc-port" in err
    assert f"port {dashboard} (Ray's dashboard) is taken by another process: choose another --dashboard-port" in err
    assert "Traceback" not in err


def test_the_dashboard_agent_port_that_ray_fixes_is_checked_unless_there_is_no_dashboard(listening):
    if not ports.bindable(ports.DASHBOARD_AGENT_PORT):
        pytest.skip(f"port {ports.DASHBOARD_AGENT_PORT} is in use on this machine already")
    listening(ports.DASHBOARD_AGENT_PORT, "0.0.0.0")
    args = type("Args", (), {"http_port": 0, "grpc_port": 0, "host": "127.0.0.1", "dashboard": True,
                             "dashboard_port": None})()
    (problem,) = ports.taken_ports(args)
    assert f"port {ports.DASHBOARD_AGENT_PORT} (Ray's dashboard agent" in problem and "--no-dashboard" in problem
    args.dashboard = False
    assert ports.taken_ports(args) == []


def test_serve_fixed_ports_are_chosen_free_for_each_server(listening, monkeypatch):
    for name in SERVE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    first = ports.choose_serve_ports()
    assert {f"RAY_SERVE_{name}" for name in first} == set(SERVE_VARIABLES)
    assert all(os.environ[f"RAY_SERVE_{name}"] == str(port) for name, port in first.items())
    block = range(first["FALLBACK_PROXY_HTTP_PORT"], first["DIRECT_INGRESS_MAX_GRPC_PORT"] + 1)
    assert len(block) == 2 + 2 * ports.INGRESS_REPLICA_PORTS
    for port in (block[0], block[-1], first["DIRECT_INGRESS_MIN_GRPC_PORT"]):
        listening(port, "0.0.0.0")  # the first server's Serve now listens there
    for name in SERVE_VARIABLES:
        monkeypatch.delenv(name)
    second = ports.choose_serve_ports()
    assert not set(range(second["FALLBACK_PROXY_HTTP_PORT"], second["DIRECT_INGRESS_MAX_GRPC_PORT"] + 1)) & {
        block[0], block[-1], first["DIRECT_INGRESS_MIN_GRPC_PORT"]}
    monkeypatch.setenv("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", "9500")  # the user's choice stands
    assert ports.choose_serve_ports() == {}
