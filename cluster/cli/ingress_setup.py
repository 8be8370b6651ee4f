"""How ``ric serve`` sets up its ingress: what it puts in the environment before a local Ray starts (Ray and
Serve read it when first imported: the ingress kind, gRPC message limits, the node address), and the
builder args that make each ingress replica listen itself (``--ingress direct``)."""

from __future__ import annotations

import argparse
import os

from cluster.cli.haproxy import (
    HEADER_TIMEOUT_S, MAX_CLIENT_CONNECTIONS, haproxy_binary, private_haproxy_files, tune_http2,
)


def choose_ingress(wanted: str, header_timeout_s: int = HEADER_TIMEOUT_S,
                   max_client_connections: int = MAX_CLIENT_CONNECTIONS) -> str:
    """Set up the ingress for a local Ray; read by Ray when it is first imported.

    direct: the ingress replicas listen themselves (no proxy); haproxy: HAProxy routes HTTP straight to the
    replicas. With either, throughput-optimized Serve runs handle routing in the replicas' own event loops
    (and calls between replicas over gRPC); see docs/benchmarks.md for the measured differences.
    """
    if wanted == "direct":
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        # Which turns on Serve's direct ingress unless told otherwise: a listener per replica on ports of
        # Serve's, and a fallback proxy on the head node at Serve's HTTP port (8000, which the ingress
        # replicas' own listeners share through SO_REUSEPORT: connections were split between the two).
        os.environ.setdefault("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")
        return wanted
    if wanted == "haproxy" and haproxy_binary() is None:
        print("ric: no haproxy binary (pip install 'ray[serve]' brings one, or apt-get install haproxy); "
              "using Serve's default proxy", flush=True)
        return "default"
    if wanted == "haproxy":
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
        tune_http2()
        private_haproxy_files(header_timeout_s, max_client_connections)
    return wanted


#: Serve's gRPC between replicas (throughput-optimized handles) refuses messages over 4 MB by default: a
#: large request or response between the ingress and a model's own deployment, or an ensemble and a step,
#: failed. The ingress bounds requests; responses have no bound (as in Triton).
REPLICA_GRPC_MAX_MESSAGE_LENGTH = 2**31 - 1


def limit_grpc_messages(max_request_bytes: int) -> None:
    """Make Serve's gRPC proxy refuse messages over the request limit before reading them (both ways:
    Serve has one setting), and let its gRPC between replicas carry any message; read by the local Ray's
    processes when they start."""
    os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(max_request_bytes))
    os.environ.setdefault("RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH", str(REPLICA_GRPC_MAX_MESSAGE_LENGTH))


def keep_local_ray_on_loopback() -> None:
    """Make a local Ray pick 127.0.0.1 as its node address; read by Ray when it is first imported."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def own_listeners(args: argparse.Namespace) -> dict:
    """The builder args that make each ingress replica listen on the ports itself (``--ingress direct``),
    with the bounds a front proxy kept otherwise."""
    if args.ingress != "direct":
        return {}
    return {"host": args.host, "http_port": args.http_port, "grpc_port": args.grpc_port,
            "header_timeout_s": args.header_timeout_s, "idle_timeout_s": args.client_timeout_s,
            "max_client_connections": args.max_client_connections}
