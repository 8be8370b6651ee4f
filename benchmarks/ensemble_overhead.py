"""Ensemble vs the same steps called one by one from the client, side by side in one run.

Serves the example repository on a local Ray (127.0.0.1, free ports), then drives over HTTP JSON:
  ensemble:  POST detect_classify                      (one round trip; the steps run inside the cluster)
  by hand:   POST detector, then POST mlp with its crops (two round trips, crops re-encoded by the client)
Prints a table and the ratio; `--out FILE` also writes it as Markdown.

    python benchmarks/ensemble_overhead.py --concurrency 1 8 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cluster.cli.perf import make_cell, closed_loop  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tensor(name, array):
    return {"name": name, "shape": list(array.shape), "datatype": "FP32", "data": array.ravel().tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--objects", type=int, default=4, help="objects per image (crops to classify)")
    parser.add_argument("--out", help="also write the table as Markdown to this file")
    args = parser.parse_args()

    import ray
    from ray import serve

    from cluster.app import AppArgs, build

    image = -np.abs(np.random.default_rng(0).standard_normal((16, 64))).astype(np.float32)
    image[: args.objects] *= -1
    ray.init(address="local", num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build(AppArgs(models=["detect_classify"])), name="ric", route_prefix="/")
    base = f"http://127.0.0.1:{port}/v2/models"
    ensemble_body = {"inputs": [tensor("IMAGE", image)]}

    async def ensemble(session) -> bool:
        async with session.post(f"{base}/detect_classify/infer", json=ensemble_body) as response:
            await response.read()
            return response.status == 200

    async def by_hand(session) -> bool:
        async with session.post(f"{base}/detector/infer", json=ensemble_body) as response:
            if response.status != 200:
                return False
            detected = {o["name"]: o for o in (await response.json())["outputs"]}
        crops = np.array(detected["CROPS"]["data"], np.float32).reshape(detected["CROPS"]["shape"])
        async with session.post(f"{base}/mlp/infer", json={"inputs": [tensor("INPUT0", crops)]}) as response:
            await response.read()
            return response.status == 200

    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; ray {ray.__version__}; "
             f"{args.objects} objects per image, {args.seconds:.0f} s per cell, HTTP JSON, Serve's default proxy",
             "", "| concurrency | ensemble | steps one by one | ensemble / by hand |", "|---|---|---|---|"]
    async def measure(call, label, concurrency):
        async with aiohttp.ClientSession() as session:
            measured = await closed_loop(lambda: call(session), concurrency, args.seconds)
        return make_cell(label, "http-json", measured, 1, concurrency)

    try:
        for concurrency in args.concurrency:
            one = asyncio.run(measure(ensemble, "ensemble", concurrency))
            two = asyncio.run(measure(by_hand, "by hand", concurrency))
            print(f"{one.row()}\n{two.row()}", flush=True)
            lines.append(f"| {concurrency} | {one.requests_per_s:.0f} req/s, p50 {one.p50_ms:.1f} ms, "
                         f"p99 {one.p99_ms:.1f} ms, {one.errors} errors | {two.requests_per_s:.0f} req/s, "
                         f"p50 {two.p50_ms:.1f} ms, p99 {two.p99_ms:.1f} ms, {two.errors} errors | "
                         f"{one.requests_per_s / two.requests_per_s:.2f}x |")
    finally:
        serve.shutdown()
        ray.shutdown()
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
