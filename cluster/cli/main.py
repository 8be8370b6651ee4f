"""The ``ric`` command line: ``ric serve [REPOSITORY]`` serves a model repository on Ray Serve, ``ric status``
shows what it is doing, ``ric perf`` measures it, ``ric traffic`` splits a model's traffic between versions,
``ric profile`` writes a model's drift reference."""

from __future__ import annotations

import argparse
import sys

from cluster.cli import perf, ports, profile, status, traffic
from cluster.cli.arguments import ingress_autoscaling, non_negative, positive, restriction
from cluster.cli.haproxy import HEADER_TIMEOUT_S, MAX_CLIENT_CONNECTIONS, limit_idle_clients
from cluster.cli.ingress_setup import choose_ingress, keep_local_ray_on_loopback, limit_grpc_messages
from cluster.cli.serve import serve_repository
from cluster.repository.examples import EXAMPLE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ric", description="Triton-class model serving on Ray Serve.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve a model repository until Ctrl-C")
    serve_cmd.add_argument("repository", nargs="?", default=EXAMPLE,
                           help="model repository folder (default: the generated example repository)")
    serve_cmd.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    serve_cmd.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_cmd.add_argument("--metrics-port", type=non_negative(int), default=8002,
                           help="Prometheus metrics port, Triton's nv_* metrics of the whole application at "
                                "/metrics (default 8002; 0: none)")
    serve_cmd.add_argument("--trace-dir",
                           help="folder for trace files (Triton's trace_file setting names a file in it; default "
                                "/tmp/ric-traces)")
    serve_cmd.add_argument("--payload-log", default="", metavar="FOLDER|s3://BUCKET/PREFIX",
                           help="where models with a payload_log block write their sampled requests and answers "
                                "(JSON lines; a folder on each replica's node, or S3)")
    serve_cmd.add_argument("--http-header-forward-pattern", default="", metavar="REGEX",
                           help="HTTP headers of inference requests whose names match reach the model as request "
                                "parameters, as Triton's flag (case-insensitive; a (?-i) prefix: case-sensitive)")
    serve_cmd.add_argument("--grpc-header-forward-pattern", default="", metavar="REGEX",
                           help="the same for gRPC metadata")
    serve_cmd.add_argument("--models", help="comma-separated models to serve (default: all)")
    serve_cmd.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    serve_cmd.add_argument("--num-cpus", type=non_negative(float), help="CPUs of the local Ray (default: this machine's)")
    serve_cmd.add_argument("--num-gpus", type=non_negative(float), help="GPUs of the local Ray (default: detected)")
    serve_cmd.add_argument("--ingress", choices=["direct", "haproxy", "default"], default="direct",
                           help="direct (default: each ingress replica listens on the HTTP and gRPC ports itself, "
                                "no proxy in between), haproxy (Serve's HAProxy ingress in front of the replicas) "
                                "or default (Serve's Python proxies)")
    serve_cmd.add_argument("--replica-num-cpus", type=non_negative(float), default=0.25,
                           help="CPUs Ray reserves per model replica (default 0.25; a model's num_cpus parameter "
                                "overrides)")
    serve_cmd.add_argument("--placement-timeout-s", type=positive(float), default=30.0,
                           help="give up when replicas are still not placed after this long (default 30; an "
                                "autoscaling cluster adding nodes needs longer)")
    serve_cmd.add_argument("--dashboard", action=argparse.BooleanOptionalAction, default=True,
                           help="start Ray's dashboard on 127.0.0.1 with the local Ray, for `ray job submit` "
                                "and `serve deploy` (default on)")
    serve_cmd.add_argument("--dashboard-port", type=int,
                           help="dashboard port (default 8265, or the next free one when another process has it)")
    serve_cmd.add_argument("--colocate", action=argparse.BooleanOptionalAction, default=True,
                           help="run CPU models inside the ingress replicas too, one hop less for HTTP and gRPC "
                                "(default on; --no-colocate keeps each model in its own deployment only)")
    serve_cmd.add_argument("--max-request-bytes", type=positive(int), default=64 * 2**20,
                           help="largest request body (HTTP 413 above) and gRPC message either way "
                                "(RESOURCE_EXHAUSTED above, refused unread), "
                                "default 64 MiB")
    serve_cmd.add_argument("--response-cache-bytes", type=non_negative(int), default=64 * 2**20,
                           help="bytes each copy of a model with response_cache { enable: true } keeps in answers "
                                "(default 64 MiB; least recently used evicted first)")
    serve_cmd.add_argument("--execution-timeout-s", type=positive(float), default=300.0,
                           help="how long a request may wait in its model replica (queue and execution) before "
                                "it answers 503; a longer batch fails the replica's health check and Serve "
                                "replaces it (default 300; a model's execution_timeout_s parameter overrides)")
    serve_cmd.add_argument("--client-timeout-s", type=positive(int), default=60,
                           help="a client connection that sends nothing for this long is closed (HAProxy: mid-request "
                                "too; direct: between requests, as --body-timeout-s bounds a body) (default 60)")
    serve_cmd.add_argument("--header-timeout-s", type=positive(int), default=HEADER_TIMEOUT_S,
                           help="a client whose request headers take longer than this in all is cut off (408), "
                                f"however it trickles them (default {HEADER_TIMEOUT_S})")
    serve_cmd.add_argument("--max-client-connections", type=non_negative(int), default=MAX_CLIENT_CONNECTIONS,
                           help="connections past this many open from one client address answer 429 (direct: per "
                                "ingress replica), "
                                f"so that one client cannot hold every request slot (default {MAX_CLIENT_CONNECTIONS}; "
                                "0: no limit)")
    serve_cmd.add_argument("--body-timeout-s", type=positive(float), default=60.0,
                           help="a request body that has not all arrived after this long answers 408, however it "
                                "trickles (default 60)")
    serve_cmd.add_argument("--server-name", default="triton",
                           help="the server's name in /v2 metadata (default triton: Triton's own clients check it)")
    serve_cmd.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="poll",
                           help="poll (default): served models follow new versions and configs in the repository, "
                                "and the repository API may not load or unload; none: nothing changes after start; "
                                "explicit: the repository API loads, unloads and uploads models (anyone who "
                                "reaches the ports can then run code: restrict it, see --restricted-api)")
    serve_cmd.add_argument("--restricted-api", type=restriction, action="append", default=[],
                           metavar="GROUP[,GROUP...]:KEY=VALUE",
                           help="answer these API groups (health, metadata, inference, shared-memory, model-config, "
                                "model-repository, statistics, trace, logging) only for requests with header "
                                "KEY: VALUE (gRPC: metadata triton-grpc-protocol-KEY), as Triton's "
                                "--http-restricted-api; repeat for other groups")
    serve_cmd.add_argument("--ingress-autoscaling", type=ingress_autoscaling, metavar="FIELD=VALUE,...",
                           help="autoscale the ingress replicas (and the colocated model copies inside them) with "
                                "their load, e.g. max_replicas=4; fields as a model's autoscaling config "
                                "(default: one ingress replica)")
    serve_cmd.add_argument("--colocate-python", action=argparse.BooleanOptionalAction, default=True,
                           help="with --colocate, run Python-backend models inside the ingress too, each in a "
                                "stub process (a crash or a wedged batch costs that model's requests in flight "
                                "only); decoupled ones keep to their own deployments (default on; "
                                "--no-colocate-python: every Python model in its own deployment only)")
    status_cmd = commands.add_parser("status", help="what a running application is doing, per model",
                                     description=status.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_arguments(status_cmd)
    traffic_cmd = commands.add_parser("traffic", help="show or change a model's traffic split between its versions",
                                      description=traffic.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    traffic.add_arguments(traffic_cmd)
    profile_cmd = commands.add_parser("profile", help="write a model's drift reference profile from reference data",
                                      description=profile.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    profile.add_arguments(profile_cmd)
    perf_cmd = commands.add_parser("perf", help="measure a running server: throughput, latency, errors",
                                   description=perf.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    perf.add_arguments(perf_cmd)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "serve" and not args.address:
        taken = ports.taken_ports(args)
        if taken:
            print("\n".join(f"ric serve: {problem}" for problem in taken), file=sys.stderr, flush=True)
            return 2
        ports.choose_serve_ports()
        keep_local_ray_on_loopback()
        limit_grpc_messages(args.max_request_bytes)
        limit_idle_clients(args.client_timeout_s)
        args.ingress = choose_ingress(args.ingress, args.header_timeout_s, args.max_client_connections)
    if args.command == "serve":
        return serve_repository(args)
    if args.command == "perf":
        return perf.main(args)
    if args.command == "status":
        return status.main(args)
    if args.command == "traffic":
        return traffic.main(args)
    if args.command == "profile":
        return profile.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
