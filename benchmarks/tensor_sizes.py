"""Large tensors: every path against the in-process copy limit, over a sweep of sizes, in one run.

Starts `ric serve` on the example repository (as the README does) and sends the `identity` model (FP32 in,
the same out) requests of 4 KB, 64 KB, 1 MB, 4 MB and 16 MB, one at a time (c=1), over binary HTTP, gRPC,
a Serve handle from this process (another Ray job) and system shared memory (HTTP, inputs and outputs in
regions the client writes and reads each time). The limit is one numpy copy of the tensor in process.
Prints a Markdown table (requests/s, MB/s of input and output moved, and the ratio to the copy limit) and
draws MB/s against size to `--plot` (default docs/tensor_sizes.png).

    python benchmarks/tensor_sizes.py --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.observability import start_server  # noqa: E402
from benchmarks.triton_features import calls_per_s  # noqa: E402

SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20)
PATHS = ("http-binary", "grpc", "handle", "shared memory")


def copies_per_s(size: int, seconds: float) -> float:
    array, count = np.ones(size // 4, np.float32), 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        array.copy()
        count += 1
    return count / seconds


async def perf_rate(protocol: str, url: str, grpc: str, size: int, seconds: float) -> float:
    from cluster.cli import perf
    from cluster.cli.perf_clients import fetch_metadata, make_client, output_names, request_tensors

    metadata = await fetch_metadata(protocol, "identity", url, grpc, "ric")
    tensors = request_tensors(metadata, input_bytes=size)
    client = make_client(protocol, "identity", tensors, output_names(metadata), url, grpc, "ric", None, 1)
    try:
        measured = await perf.closed_loop(client, 1, seconds, warmup_s=0.5)
    finally:
        await client.close()
    assert not measured.errors, measured.first_error
    return len(measured.latencies_ms) / measured.seconds


def shared_memory_rate(url: str, size: int, seconds: float) -> float:
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    data = np.random.default_rng(0).standard_normal((1, size // 4)).astype(np.float32)
    key = f"ric-sizes-{os.getpid()}"
    regions = [shm.create_shared_memory_region(f"{key}-{side}", f"/{key}-{side}", size) for side in ("in", "out")]
    for side in ("in", "out"):
        client.register_system_shared_memory(f"{key}-{side}", f"/{key}-{side}", size)
    x = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    x.set_shared_memory(f"{key}-in", size)
    y = httpclient.InferRequestedOutput("OUTPUT0")
    y.set_shared_memory(f"{key}-out", size)

    def call() -> None:
        shm.set_shared_memory_region(regions[0], [data])
        client.infer("identity", [x], outputs=[y])
        shm.get_contents_as_numpy(regions[1], np.float32, list(data.shape)).copy()

    try:
        return calls_per_s(call, seconds)
    finally:
        client.unregister_system_shared_memory()
        for region in regions:
            shm.destroy_shared_memory_region(region)


def plot(path: str, rates: dict[str, dict[int, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for label, by_size in rates.items():
        axis.plot([s / 1024 for s in by_size], [rate * 2 * s / 1e6 for s, rate in by_size.items()], marker="o",
                  label=label, linestyle="--" if label.startswith("limit") else "-")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("tensor size (KB), in and out")
    axis.set_ylabel("MB/s moved (input + output), c=1")
    axis.set_title("identity model over each path vs one in-process copy")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--plot", default="docs/tensor_sizes.png")
    parser.add_argument("--out", help="also write the table as Markdown to this file")
    args = parser.parse_args()
    rates: dict[str, dict[int, float]] = {"limit: one numpy copy": {}, **{path: {} for path in PATHS}}
    with tempfile.TemporaryDirectory() as folder:
        process, url, _, grpc = start_server(Path(folder))
        os.environ["HOME"] = folder  # where ric serve wrote how to reach it (cluster.client.connect)
        try:
            from cluster.client import connect

            connect()
            for size in SIZES:
                rates["limit: one numpy copy"][size] = copies_per_s(size, args.seconds)
                for path in ("http-binary", "grpc", "handle"):
                    rates[path][size] = asyncio.run(perf_rate(path, url, grpc, size, args.seconds))
                rates["shared memory"][size] = shared_memory_rate(url, size, args.seconds)
        finally:
            import ray

            ray.shutdown()  # leave the cluster before it goes
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=120)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; ric serve (HAProxy ingress, identity "
             f"colocated), c=1, {args.seconds:g} s per cell; MB/s counts input and output", "",
             "| path | " + " | ".join(f"{s >> 10} KB" for s in SIZES) + " |", "|---|" + "---|" * len(SIZES)]
    limit = rates["limit: one numpy copy"]
    for label, by_size in rates.items():
        cells = [f"{by_size[s]:.0f}/s, {by_size[s] * 2 * s / 1e6:.0f} MB/s"
                 + ("" if label.startswith("limit") else f", {by_size[s] / limit[s]:.3f}x") for s in SIZES]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    plot(args.plot, rates)


if __name__ == "__main__":
    main()
