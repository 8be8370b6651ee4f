"""One serving configuration of the comparison, in its own process (Serve's ingress is chosen by
environment variables that Ray reads when it is imported); benchmarks/compare.py runs it.

Serves the benchmark repository as application ``ric`` beside a do-nothing deployment (application
``nothing``: HTTP, gRPC ModelInfer and a handle ``infer`` that all return at once), on one local Ray, then
measures the cells of the plan with ``cluster.cli.perf`` and writes them as JSON.

    python benchmarks/stage.py --ingress haproxy --repository DIR --out cells.json [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FLOOR_APP = "nothing"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ingress", choices=["haproxy", "default"], required=True)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--colocate", action="store_true", help="serve with AppArgs.colocate (no ingress -> model hop)")
    parser.add_argument("--quick", action="store_true", help="the fastest plan that still fills every table")
    return parser.parse_args()


def configure_ingress(ingress: str) -> None:
    from cluster.cli.ingress_setup import choose_ingress, keep_local_ray_on_loopback

    keep_local_ray_on_loopback()
    if ingress == "haproxy" and choose_ingress("haproxy") != "haproxy":
        raise SystemExit("stage: Serve's HAProxy ingress is not available here")


def floor_deployment():
    from ray import serve
    from starlette.responses import Response
    from tritonclient.grpc import service_pb2

    from cluster.protocol.grpc_service import register_message_modules

    @serve.deployment(name="Nothing", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0.25})
    class Nothing:
        """The platform floor: reads the request and answers at once, on every transport."""

        def __init__(self):
            register_message_modules()  # the gRPC reply is pickled back to the proxy

        async def __call__(self, request):
            await request.body()
            return Response(b"{}", media_type="application/json")

        async def ModelInfer(self, request):  # noqa: N802 (the gRPC method name)
            return service_pb2.ModelInferResponse()

        async def infer(self, inputs):
            return inputs

    return Nothing.bind()


async def measure_plan(args, http: str, grpc_target: str) -> list[dict]:
    from benchmarks import perf_analyzer
    from cluster.cli import perf, perf_clients

    setup = args.ingress + (" colocated" if args.colocate else "")
    sweep = [1, 16] if args.quick else [1, 4, 16, 64]
    seconds, warmup = (1.0, 0.5) if args.quick else (args.seconds, 1.0)
    metadata = {m: await perf_clients.fetch_metadata("http-binary", m, http, grpc_target, "ric")
                for m in ("tiny", "big")}
    tensors = {m: perf_clients.request_tensors(meta) for m, meta in metadata.items()}
    cells: list[dict] = []

    async def measure(label, protocol, model, concurrency=None, rate=None, target="ric", secs=seconds):
        meta_model = "big" if model.startswith("big") else model
        base = f"{http}/nothing" if target == FLOOR_APP else http
        client = perf_clients.make_client(protocol, model if target == "ric" else "Nothing", tensors[meta_model],
                                          perf_clients.output_names(metadata[meta_model]), base, grpc_target,
                                          target, target, concurrency or 64)
        try:
            result = await perf.measure(client, label, protocol, 1, concurrency=concurrency, rate=rate,
                                        seconds=secs, warmup_s=warmup, stats_url=http if target == "ric" else None,
                                        stats_model=model)
        finally:
            await client.close()
        print(f"[{setup}] {result.row()}", flush=True)
        return result

    def record(group, model, result, runs=None):
        cells.append({"group": group, "ingress": setup, "model": model, **result.to_dict(),
                      **({"runs": [round(r.requests_per_s) for r in runs]} if runs else {})})
        return result

    async def cell(group, label, protocol, model, concurrency=None, rate=None, target="ric", secs=seconds):
        return record(group, model, await measure(label, protocol, model, concurrency, rate, target, secs))

    async def interleaved(pairs, concurrency, secs=seconds):
        """Cells whose ratio is a target, measured alternately ``repeats`` times; the median run of each is
        kept (with every run's req/s), so a noisy minute cannot make or break a ratio."""
        runs = {key: [] for key in pairs}
        for _ in range(repeats):
            for key, (label, protocol, model, target) in pairs.items():
                runs[key].append(await measure(label, protocol, model, concurrency, target=target, secs=secs))
        for key, results in runs.items():
            ordered = sorted(results, key=lambda r: r.requests_per_s)
            record(key[0], pairs[key][2], ordered[len(ordered) // 2], results)

    repeats = 1 if args.quick else 3
    if args.ingress == "default":
        for protocol in ("http-binary", "grpc"):
            await cell("floor", "do-nothing", protocol, "tiny", 16, target=FLOOR_APP)
            await cell("ours", "tiny", protocol, "tiny", 16)
        return cells
    for protocol in ("http-json", "http-binary", "grpc", "handle"):
        for concurrency in sweep:
            if concurrency == 16 and protocol in ("http-binary", "grpc"):
                await interleaved({("floor", protocol): ("do-nothing", protocol, "tiny", FLOOR_APP),
                                   ("ours", protocol): ("tiny", protocol, "tiny", "ric")}, concurrency)
                continue
            if protocol != "http-json":
                await cell("floor", "do-nothing", protocol, "tiny", concurrency, target=FLOOR_APP)
            await cell("ours", "tiny", protocol, "tiny", concurrency)
    binary16 = next(c for c in cells if c["group"] == "ours" and c["protocol"] == "http-binary"
                    and c["concurrency"] == 16)
    rate = max(round(binary16["requests_per_s"] / 2, -1), 10)  # half of what the server can do
    await cell("open-loop", "tiny", "http-binary", "tiny", rate=rate)
    await interleaved({("batching", "off"): ("big_nobatch", "http-binary", "big_nobatch", "ric"),
                       ("batching", "on"): ("big", "http-binary", "big", "ric")}, 32, secs=seconds * 2)
    for model in ("big_nobatch", "big"):
        await cell("batching", model, "handle", model, 32, secs=seconds * 2)
    if perf_analyzer.available():
        for json_tensors in (False, True):
            measured = await asyncio.to_thread(perf_analyzer.measure, "tiny", http.removeprefix("http://"), 16,
                                               json_tensors)
            cells.append({"group": "perf_analyzer", "ingress": setup, "model": "tiny",
                          "protocol": "http-json" if json_tensors else "http-binary", "concurrency": 16, **measured})
            print(f"[{setup}] perf_analyzer {cells[-1]}", flush=True)
    return cells


def main() -> None:
    args = parse_args()
    configure_ingress(args.ingress)
    import ray
    from ray import serve

    from cluster.app import AppArgs, build
    from cluster.protocol.grpc_service import SERVICER_FUNCTION

    http_port, grpc_port = free_port(), free_port()
    ray.init(address="local", num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                    grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]})
        serve.run(floor_deployment(), name=FLOOR_APP, route_prefix="/nothing")
        app_args = AppArgs(repository=args.repository, poll_interval_s=0, colocate=args.colocate)
        serve.run(build(app_args), name="ric", route_prefix="/")
        asyncio.run(measure_and_shut_down(args, f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"))
    finally:
        ray.shutdown()


async def measure_and_shut_down(args, http: str, grpc_target: str) -> None:
    """Measure, write the cells, and shut Serve down in the loop its handles were made in."""
    from ray import serve

    try:
        cells = await measure_plan(args, http, grpc_target)
        with open(args.out, "w") as f:
            json.dump(cells, f, indent=1)
    finally:
        await serve.shutdown_async()


if __name__ == "__main__":
    main()
