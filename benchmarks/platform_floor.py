"""The platform floor: a do-nothing Serve deployment beside our Ingress, same Ray, same proxy, same client.

    python benchmarks/platform_floor.py --seconds 4

Prints sequential latency (requests.Session) and closed-loop throughput at concurrency 16 (aiohttp) for:
a do-nothing deployment, our Ingress alone (GET /v2/health/live), and Ingress + model (GET model metadata).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.load import closed_loop  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    import ray
    import requests
    from ray import serve
    from starlette.responses import Response

    from cluster.app import AppArgs, build

    @serve.deployment(max_ongoing_requests=1024)
    class Nothing:
        async def __call__(self, request):
            return Response(b"")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(address="local", num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Nothing.bind(), name="nothing", route_prefix="/nothing")
        serve.run(build(AppArgs(models=["simple"])), name="ric", route_prefix="/")
        routes = {"do-nothing deployment": "/nothing", "Ingress only (/v2/health/live)": "/v2/health/live",
                  "Ingress + model (/v2/models/simple)": "/v2/models/simple"}
        session = requests.Session()
        print(f"| route | sequential | concurrency {args.concurrency} |\n|---|---|---|")
        for label, path in routes.items():
            url = f"http://127.0.0.1:{port}{path}"
            for _ in range(10):
                session.get(url)
            start = time.perf_counter()
            for _ in range(50):
                session.get(url)
            sequential_ms = (time.perf_counter() - start) / 50 * 1000

            async def call(client, url=url):
                async with client.get(url) as response:
                    await response.read()
                    return response.status == 200

            result = asyncio.run(closed_loop(call, args.concurrency, args.seconds))
            print(f"| {label} | {sequential_ms:.1f} ms | {result.throughput:.0f} req/s ({result.errors} errors) |",
                  flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
