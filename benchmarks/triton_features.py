"""Triton features side by side in one run: sequences with 1 vs 4 replicas, streaming over gRPC and SSE,
system shared memory vs binary HTTP on a 4 MB tensor.

Serves a generated repository on a local Ray (127.0.0.1, free ports; the ingress colocates CPU models, as
`ric serve` does) and drives it with stock tritonclient and aiohttp:
  sequences:  16 concurrent sequences of 8 requests over gRPC against a sequence model (a Python model
              whose every request takes 20 ms of sleep, standing for a model that leaves the CPU to others,
              such as one waiting on a GPU), with 1 and 4 replicas; sequences/s
  streaming:  text_generator (example, 32 tokens) over gRPC ModelStreamInfer and HTTP generate_stream:
              time to the first response and per further response, against one unary /infer of a
              one-token request (the floor of one response)
  shm:        an ONNX Identity over [1, 1048576] FP32 (4 MB in, 4 MB out) at concurrency 1: binary HTTP vs
              inputs and outputs in system shared memory (the client writes the input and reads the
              output through its regions each time)
  cache:      an ONNX MLP 1024-2048-2048-1000, the same request again and again, binary HTTP, c=1: with
              response_cache (every request after the first a hit) vs without; median latency
Prints a Markdown table; `--out FILE` also writes it.

    python benchmarks/triton_features.py --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEQUENCE_MODEL = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            time.sleep(0.02)
            get = lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            corrid = int(get("CORRID")[0, 0])
            self.sums[corrid] = (0 if get("START")[0, 0] else self.sums.get(corrid, 0)) + int(get("X").sum())
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", np.full((1, 1), self.sums[corrid]))]))
        return responses
"""

SEQUENCE_CONFIG = """
backend: "python"
max_batch_size: 8
instance_group [ {{ count: {replicas} }} ]
sequence_batching {{
  control_input [
    {{ name: "START" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
input [ {{ name: "X" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "SUM" data_type: TYPE_INT64 dims: [ 1 ] }} ]
"""

IDENTITY_ELEMENTS = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_model(root: Path, name: str, config: str, files: dict[str, str | bytes]) -> None:
    (root / name / "1").mkdir(parents=True)
    (root / name / "config.pbtxt").write_text(config)
    for relative, content in files.items():
        path = root / name / relative
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def repository(root: Path) -> Path:
    from cluster.repository.examples import EXAMPLE_ROOT, onnx_identity, onnx_mlp

    for replicas in (1, 4):
        write_model(root, f"sequence_{replicas}", SEQUENCE_CONFIG.format(replicas=replicas),
                    {"1/model.py": SEQUENCE_MODEL})
    write_model(root, "identity", 'platform: "onnxruntime_onnx" max_batch_size: 1',
                {"1/model.onnx": onnx_identity(IDENTITY_ELEMENTS)})
    mlp = onnx_mlp((1024, 2048, 2048, 1000))
    write_model(root, "mlp", 'platform: "onnxruntime_onnx" max_batch_size: 8', {"1/model.onnx": mlp})
    write_model(root, "mlp_cached", 'platform: "onnxruntime_onnx" max_batch_size: 8 response_cache { enable: true }',
                {"1/model.onnx": mlp})
    generator = EXAMPLE_ROOT / "text_generator"
    write_model(root, "text_generator", (generator / "config.pbtxt").read_text(),
                {"1/model.py": (generator / "1" / "model.py").read_text()})
    return root


def sequences_per_s(grpc_url: str, model: str, seconds: float, concurrency: int = 16, length: int = 8) -> float:
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.grpc import InferInput

    async def run() -> int:
        client = grpcaio.InferenceServerClient(grpc_url)
        deadline, done = time.monotonic() + seconds, 0

        async def worker(n: int) -> None:
            nonlocal done
            sequence = 1 + n * 1_000_000
            while time.monotonic() < deadline:
                sequence += 1
                for step in range(length):
                    x = InferInput("X", [1, 1], "INT64")
                    x.set_data_from_numpy(np.ones((1, 1), np.int64))
                    await client.infer(model, [x], sequence_id=sequence, sequence_start=step == 0,
                                       sequence_end=step == length - 1)
                done += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        await client.close()
        return done

    return asyncio.run(run()) / seconds


def streaming(grpc_url: str, http_url: str, rounds: int, tokens: int = 32) -> dict[str, tuple[float, float]]:
    """Median time to the first response and per further response, ms, per path."""
    import aiohttp
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.grpc import InferInput

    def inputs(count: int):
        text, limit = InferInput("TEXT", [1], "BYTES"), InferInput("MAX_TOKENS", [1], "INT32")
        text.set_data_from_numpy(np.array([b"hello"], dtype=object))
        limit.set_data_from_numpy(np.array([count], np.int32))
        return [text, limit]

    async def grpc_once(count: int) -> list[float]:
        client = grpcaio.InferenceServerClient(grpc_url)

        async def one():
            yield {"model_name": "text_generator", "inputs": inputs(count)}

        start, times = time.perf_counter(), []
        async for _, error in client.stream_infer(one()):
            assert error is None, error
            times.append(time.perf_counter() - start)
            if len(times) == count:
                break
        await client.close()
        return times

    async def sse_once(session, count: int) -> list[float]:
        start, times = time.perf_counter(), []
        async with session.post(f"{http_url}/v2/models/text_generator/generate_stream",
                                json={"TEXT": "hello", "MAX_TOKENS": count}) as response:
            async for line in response.content:
                if line.startswith(b"data: "):
                    times.append(time.perf_counter() - start)
        return times

    async def unary_once(session) -> list[float]:
        start = time.perf_counter()
        async with session.post(f"{http_url}/v2/models/text_generator/generate",
                                json={"TEXT": "hello", "MAX_TOKENS": 1}) as response:
            await response.read()
        return [time.perf_counter() - start]

    async def run():
        results = {"gRPC ModelStreamInfer": [], "HTTP generate_stream (SSE)": [], "HTTP generate (1 token)": []}
        async with aiohttp.ClientSession() as session:
            for _ in range(rounds):
                results["gRPC ModelStreamInfer"].append(await grpc_once(tokens))
                results["HTTP generate_stream (SSE)"].append(await sse_once(session, tokens))
                results["HTTP generate (1 token)"].append(await unary_once(session))
        return results

    summary = {}
    for path, runs in asyncio.run(run()).items():
        first = statistics.median(times[0] for times in runs) * 1000
        rest = [(times[-1] - times[0]) / (len(times) - 1) * 1000 for times in runs if len(times) > 1]
        summary[path] = (first, statistics.median(rest) if rest else float("nan"))
    return summary


def calls_per_s(call, seconds: float) -> float:
    """How many times a second ``call`` runs, one after another, after one unmeasured call."""
    call()
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        call()
        count += 1
    return count / seconds


def shared_memory_vs_binary(http_url: str, seconds: float) -> dict[str, float]:
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"), connection_timeout=120,
                                              network_timeout=120)
    data = np.random.default_rng(0).standard_normal((1, IDENTITY_ELEMENTS)).astype(np.float32)
    size = data.nbytes

    def binary():
        x = httpclient.InferInput("INPUT0", [1, IDENTITY_ELEMENTS], "FP32")
        x.set_data_from_numpy(data, binary_data=True)
        out = client.infer("identity", [x], outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)])
        assert out.as_numpy("OUTPUT0").shape == data.shape

    key = f"ric-bench-{os.getpid()}"
    in_region = shm.create_shared_memory_region(f"{key}-in", f"/{key}-in", size)
    out_region = shm.create_shared_memory_region(f"{key}-out", f"/{key}-out", size)
    client.unregister_system_shared_memory()
    client.register_system_shared_memory(f"{key}-in", f"/{key}-in", size)
    client.register_system_shared_memory(f"{key}-out", f"/{key}-out", size)

    def shared():
        shm.set_shared_memory_region(in_region, [data])
        x = httpclient.InferInput("INPUT0", [1, IDENTITY_ELEMENTS], "FP32")
        x.set_shared_memory(f"{key}-in", size)
        y = httpclient.InferRequestedOutput("OUTPUT0")
        y.set_shared_memory(f"{key}-out", size)
        client.infer("identity", [x], outputs=[y])
        assert shm.get_contents_as_numpy(out_region, np.float32, [1, IDENTITY_ELEMENTS])[0, 7] == data[0, 7]

    try:
        return {"binary HTTP": calls_per_s(binary, seconds), "system shared memory (HTTP)": calls_per_s(shared, seconds)}
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(in_region)
        shm.destroy_shared_memory_region(out_region)


def cache_hit_vs_model_call(http_url: str, requests: int) -> dict[str, float]:
    """Median latency (ms) of the same request, answered by the model or from the response cache."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    x = httpclient.InferInput("INPUT0", [1, 1024], "FP32")
    x.set_data_from_numpy(np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32), binary_data=True)
    medians = {}
    for model, label in (("mlp", "model call"), ("mlp_cached", "response cache hit")):
        client.infer(model, [x])  # the first (a miss, for the cached model)
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            client.infer(model, [x])
            times.append((time.perf_counter() - start) * 1000)
        medians[label] = statistics.median(times)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=20, help="streamed requests per path")
    parser.add_argument("--out", help="also write the table as Markdown to this file")
    args = parser.parse_args()

    import ray
    from ray import serve

    from cluster.app import AppArgs, build
    from cluster.protocol.grpc_service import SERVICER_FUNCTION

    ray.init(address="local", num_cpus=8, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    http_port, grpc_port = free_port(), free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": http_port},
                grpc_options={"port": grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]})
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; ray {ray.__version__}; Serve's default "
             f"proxies, CPU models colocated in the ingress; {args.seconds:.0f} s per cell", ""]
    with tempfile.TemporaryDirectory() as folder:
        try:
            serve.run(build(AppArgs(repository=str(repository(Path(folder))), colocate=True, colocate_python=True)),
                      name="ric", route_prefix="/")
            http_url, grpc_url = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
            one, four = (sequences_per_s(grpc_url, f"sequence_{n}", args.seconds) for n in (1, 4))
            lines += ["| sequences (16 at once, 8 requests each, 20 ms per request) | sequences/s |", "|---|---|",
                      f"| 1 replica | {one:.1f} |", f"| 4 replicas | {four:.1f} ({four / one:.2f}x) |", ""]
            lines += ["| streaming, text_generator | first response (ms, median) | each further response (ms) |",
                      "|---|---|---|"]
            lines += [f"| {path} | {first:.2f} | {'-' if each != each else f'{each:.2f}'} |"
                      for path, (first, each) in streaming(grpc_url, http_url, args.rounds).items()]
            rates = shared_memory_vs_binary(http_url, args.seconds)
            lines += ["", "| 4 MB in, 4 MB out, identity, c=1 | req/s | MB/s (in + out) |", "|---|---|---|"]
            lines += [f"| {path} | {rate:.1f} | {rate * 2 * IDENTITY_ELEMENTS * 4 / 1e6:.0f} |"
                      for path, rate in rates.items()]
            lines.append(f"\nshared memory / binary HTTP: "
                         f"{rates['system shared memory (HTTP)'] / rates['binary HTTP']:.2f}x")
            cache = cache_hit_vs_model_call(http_url, 200)
            lines += ["", "| MLP 1024-2048-2048-1000, same request, binary HTTP, c=1 | median ms |", "|---|---|"]
            lines += [f"| {label} | {ms:.2f} |" for label, ms in cache.items()]
            lines.append(f"\ncache hit / model call: {cache['response cache hit'] / cache['model call']:.2f}x")
        finally:
            serve.shutdown()
            ray.shutdown()
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
