"""The ports a local ``ric serve`` listens on, or has Ray and Serve listen on, checked or chosen before
anything starts.

A port of ours that another process holds ends ``ric serve`` at once with a message naming the port and the
flag that moves it, instead of Ray's traceback (or a server that starts without it). The ports Serve fixes
for every application (its fallback proxies' 8500 and 9500, and the ranges from 30000 and 40000 that its
ingress replicas listen on for HAProxy) are chosen free for each server: Serve's gRPC servers set
SO_REUSEPORT, so two servers on one machine both bound 40000 and the kernel spread each one's gRPC clients
over both servers' replicas, answering them with the other repository's models.
"""

from __future__ import annotations

import argparse
import os
import random
import socket

#: Ray's dashboard port when ``--dashboard-port`` is not given (Ray's own default).
DASHBOARD_PORT = 8265
#: Ray's dashboard agent, on a port Ray fixes and ray.init cannot move; job submission goes through it.
DASHBOARD_AGENT_PORT = 52365
#: Ports per protocol for Serve's ingress replicas on a node (replicas that stop leave theirs held a while).
INGRESS_REPLICA_PORTS = 256
#: Where the block of Serve's ports is looked for: below Linux's ephemeral range (32768-60999), from which
#: Ray's own daemons take theirs and outgoing connections take their local ports.
SERVE_PORT_RANGE = (20000, 32000)


def bindable(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a listening socket could be bound to ``host:port`` now (as Ray and Serve check, TIME_WAIT
    connections do not count)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_block(size: int, tries: int = 200) -> int:
    """The first of ``size`` consecutive ports that are all free on every interface."""
    low, high = SERVE_PORT_RANGE
    for _ in range(tries):
        start = random.randrange(low, high - size)
        if all(bindable(port) for port in range(start, start + size)):
            return start
    raise OSError(f"no {size} consecutive free ports between {low} and {high}")


def taken_ports(args: argparse.Namespace) -> list[str]:
    """What keeps a local ``ric serve`` from listening where it would, each with the flag that changes it."""
    problems = []
    for port, what, flag in ((args.http_port, "HTTP", "--http-port"), (args.grpc_port, "gRPC", "--grpc-port")):
        if not bindable(port, args.host):
            problems.append(f"port {port} on {args.host} ({what}) is taken by another process: choose another {flag}")
    if args.dashboard and args.dashboard_port is not None and not bindable(args.dashboard_port, "127.0.0.1"):
        problems.append(f"port {args.dashboard_port} (Ray's dashboard) is taken by another process: choose another "
                        "--dashboard-port, or leave it out to take a free one, or --no-dashboard")
    if args.dashboard and not bindable(DASHBOARD_AGENT_PORT):
        problems.append(f"port {DASHBOARD_AGENT_PORT} (Ray's dashboard agent, which `ray job submit` goes through; "
                        "Ray fixes it) is taken, most likely by another Ray on this machine: stop it, or start "
                        "this server with --no-dashboard")
    return problems


def choose_serve_ports() -> dict[str, int]:
    """Free ports for what Serve would bind at fixed ports, unless the user set them; read by the local Ray's
    processes when they start. The variables set, with their values."""
    names = ("FALLBACK_PROXY_HTTP_PORT", "FALLBACK_PROXY_GRPC_PORT", "DIRECT_INGRESS_MIN_HTTP_PORT",
             "DIRECT_INGRESS_MIN_GRPC_PORT")
    if any(f"RAY_SERVE_{name}" in os.environ for name in names):
        return {}
    start = free_block(2 + 2 * INGRESS_REPLICA_PORTS)
    http, grpc = start + 2, start + 2 + INGRESS_REPLICA_PORTS
    chosen = {"FALLBACK_PROXY_HTTP_PORT": start, "FALLBACK_PROXY_GRPC_PORT": start + 1,
              "DIRECT_INGRESS_MIN_HTTP_PORT": http, "DIRECT_INGRESS_MAX_HTTP_PORT": http + INGRESS_REPLICA_PORTS - 1,
              "DIRECT_INGRESS_MIN_GRPC_PORT": grpc, "DIRECT_INGRESS_MAX_GRPC_PORT": grpc + INGRESS_REPLICA_PORTS - 1}
    for name, port in chosen.items():
        os.environ[f"RAY_SERVE_{name}"] = str(port)
    return chosen
