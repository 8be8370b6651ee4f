"""Serve's gRPC servers on ``ric serve --host`` when that is a loopback address: Serve 2.60 binds its gRPC
proxy and each ingress replica's direct-ingress gRPC server on every interface (``[::]``), whatever the
HTTP host, and both answer Triton's whole gRPC API without HAProxy's timeouts. ``ric serve`` runs
``bind_serve_grpc_on_host`` in every process of its local Ray (Ray's ``worker_process_setup_hook``), which
makes Serve's one helper that adds those listening addresses use the host instead. Only for a local Ray on
loopback, where HAProxy and every replica share the node; a cluster keeps Serve's addresses (HAProxy on
one node reaches replicas on others), so firewall them there.
"""

from __future__ import annotations

import os

#: The environment variable that carries the host to the local Ray's processes.
HOST_VARIABLE = "RIC_SERVE_GRPC_HOST"
#: ric serve's setup hook, for ``ray.init(runtime_env={"worker_process_setup_hook": ...})``.
SETUP_HOOK = "cluster.cli.loopback_grpc.bind_serve_grpc_on_host"


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def bind_serve_grpc_on_host() -> None:
    """In a Ray worker process: Serve's gRPC listeners on ``$RIC_SERVE_GRPC_HOST`` instead of ``[::]``."""
    host = os.environ.get(HOST_VARIABLE)
    if not host:
        return
    from ray.serve._private import default_impl

    every_interface = default_impl.add_grpc_address

    def add_grpc_address(grpc_server, server_address: str) -> None:
        if server_address.startswith("[::]:"):
            server_address = f"{host}:{server_address.rsplit(':', 1)[1]}"
        every_interface(grpc_server, server_address)

    default_impl.add_grpc_address = add_grpc_address
