"""Large tensors: every path against the in-process copy limit, over a sweep of sizes, in one run.

Starts `ric serve` on the example repository's `identity` model (FP32 in, the same out) and an ensemble
of two identity steps (`identity_chain`, its tensors passed from step to step), and sends them requests
of 4 KB, 64 KB, 1 MB, 4 MB and 16 MB, one and four at a time (c=1, c=4), over binary HTTP, gRPC, a Serve
handle from this process (another Ray job), system shared memory (HTTP, inputs and outputs in regions each
client writes and reads each time) and binary HTTP to the ensemble. The limit is one numpy copy of the tensor in
process. Prints a Markdown table (requests/s, MB/s of input and output moved, and the ratio to the copy
limit) and draws MB/s against size to `--plot` (default docs/tensor_sizes.png).

    python benchmarks/tensor_sizes.py --seconds 3
    python benchmarks/tensor_sizes.py --paths ensemble http-binary --sizes 4194304 --plot ''
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.observability import start_server  # noqa: E402
from benchmarks.triton_features import calls_per_s  # noqa: E402

SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20)
PATHS = ("http-binary", "grpc", "handle", "shared memory", "ensemble")
ENSEMBLE = """# Two identity steps: what passing a tensor from step to step costs.
platform: "ensemble"
max_batch_size: 8
input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1 ] } ]
ensemble_scheduling { step [
  { model_name: "identity" input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUTPUT0" value: "mid" } },
  { model_name: "identity" input_map { key: "INPUT0" value: "mid" } output_map { key: "OUTPUT0" value: "OUTPUT0" } }
] }
"""


def repository(folder: Path) -> Path:
    """The example repository's identity model and the two-step ensemble over it."""
    from cluster.repository.examples import example_repository

    root = folder / "repository"
    shutil.copytree(example_repository() / "identity", root / "identity")
    (root / "identity_chain").mkdir()
    (root / "identity_chain" / "config.pbtxt").write_text(ENSEMBLE)
    return root


def copies_per_s(size: int, seconds: float) -> float:
    array, count = np.ones(size // 4, np.float32), 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        array.copy()
        count += 1
    return count / seconds


async def perf_rate(protocol: str, url: str, grpc: str, size: int, seconds: float, concurrency: int,
                    model: str = "identity") -> float:
    from cluster.cli import perf
    from cluster.cli.perf_clients import fetch_metadata, make_client, output_names, request_tensors

    metadata = await fetch_metadata(protocol, model, url, grpc, "ric")
    tensors = request_tensors(metadata, input_bytes=size)
    client = make_client(protocol, model, tensors, output_names(metadata), url, grpc, "ric", None, concurrency)
    try:
        measured = await perf.closed_loop(client, concurrency, seconds, warmup_s=0.5)
    finally:
        await client.close()
    assert not measured.errors, measured.first_error
    return len(measured.latencies_ms) / measured.seconds


def shared_memory_rate(url: str, size: int, seconds: float, concurrency: int) -> float:
    """Requests a second from ``concurrency`` clients at once (threads), each with its own two regions."""
    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(lambda i: shared_memory_client_rate(url, size, seconds, f"ric-sizes-{os.getpid()}-{i}"),
                            range(concurrency)))


def shared_memory_client_rate(url: str, size: int, seconds: float, key: str) -> float:
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
    data = np.random.default_rng(0).standard_normal((1, size // 4)).astype(np.float32)
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
        for side in ("in", "out"):
            client.unregister_system_shared_memory(f"{key}-{side}")
        for region in regions:
            shm.destroy_shared_memory_region(region)


def plot(path: str, rates: dict[str, dict[int, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 6))
    colors = {}
    for label, by_size in rates.items():
        transport = label.split(",")[0]
        line = axis.plot([s / 1024 for s in by_size], [rate * 2 * s / 1e6 for s, rate in by_size.items()],
                         marker="o", label=label, color=colors.get(transport),
                         linestyle="--" if label.startswith("limit") else ":" if "c=1" not in label else "-")
        colors.setdefault(transport, line[0].get_color())
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("tensor size (KB), in and out")
    axis.set_ylabel("MB/s moved (input + output)")
    axis.set_title("identity model over each path vs one in-process copy")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="paths to measure")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="tensor sizes in bytes")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4], help="clients at once")
    parser.add_argument("--plot", default="docs/tensor_sizes.png", help="figure to draw ('': none)")
    parser.add_argument("--out", help="also write the table as Markdown to this file")
    args = parser.parse_args()
    sizes = args.sizes
    rates: dict[str, dict[int, float]] = {"limit: one numpy copy": {}}
    rates.update({f"{path}, c={c}": {} for path in args.paths for c in args.concurrency})
    with tempfile.TemporaryDirectory() as folder:
        process, url, _, grpc = start_server(Path(folder), str(repository(Path(folder))))
        os.environ["HOME"] = folder  # where ric serve wrote how to reach it (cluster.client.connect)
        try:
            from cluster.client import connect

            connect()
            for size in sizes:
                rates["limit: one numpy copy"][size] = copies_per_s(size, args.seconds)
                for path in args.paths:
                    for c in args.concurrency:
                        if path == "shared memory":
                            rate = shared_memory_rate(url, size, args.seconds, c)
                        elif path == "ensemble":
                            rate = asyncio.run(perf_rate("http-binary", url, grpc, size, args.seconds, c,
                                                         model="identity_chain"))
                        else:
                            rate = asyncio.run(perf_rate(path, url, grpc, size, args.seconds, c))
                        rates[f"{path}, c={c}"][size] = rate
        finally:
            import ray

            ray.shutdown()  # leave the cluster before it goes
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=120)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; ric serve (HAProxy ingress, identity "
             f"colocated; ensemble: binary HTTP to identity_chain), {args.seconds:g} s per cell; MB/s counts "
             "input and output", "",
             "| path | " + " | ".join(f"{s >> 10} KB" for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
    limit = rates["limit: one numpy copy"]
    for label, by_size in rates.items():
        cells = [f"{by_size[s]:.0f}/s, {by_size[s] * 2 * s / 1e6:.0f} MB/s"
                 + ("" if label.startswith("limit") else f", {by_size[s] / limit[s]:.3f}x") for s in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    if args.plot:
        plot(args.plot, rates)


if __name__ == "__main__":
    main()
