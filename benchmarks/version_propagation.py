"""How long a new version takes from landing in the store to every replica serving it, how long a
model takes to load, and how long the repository API takes to load and unload models, measured in one run.

    python benchmarks/version_propagation.py --replicas 2 --poll 0.5 --rounds 3

Serves a local repository with one ONNX model (the batch-friendly MLP 1024-2048-2048-1000 by default),
lands versions 2..N one after another (written beside the model, renamed into place) and times, for each,
the first answer from the new version and the point from which 40 answers in a row came from it. Then it
times repository loads and unloads over HTTP: of the served model (inside its replicas), and of a copy new
to the repository (deployed as an application of its own, then deleted).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.5, help="the sync's poll interval, seconds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1024,2048,2048,1000", help="MLP layer sizes")
    args = parser.parse_args()

    import numpy as np
    import ray
    from ray import serve

    from cluster.app import AppArgs, build
    from cluster.repository.examples import onnx_mlp
    from cluster.repository.local_store import LocalStore
    from deployments.serving.runner import ModelRunner

    sizes = tuple(int(s) for s in args.sizes.split(","))
    root = Path(tempfile.mkdtemp(prefix="ric-propagation-"))
    (root / "m" / "1").mkdir(parents=True)
    (root / "m" / "config.pbtxt").write_text(
        f'platform: "onnxruntime_onnx" instance_group [ {{ count: {args.replicas} }} ]')
    (root / "m" / "1" / "model.onnx").write_bytes(onnx_mlp(sizes, seed=1))

    store = LocalStore(root)
    start = time.perf_counter()
    runner = ModelRunner(store.config("m"), store)
    runner.load()
    load_s = time.perf_counter() - start
    x = {"INPUT0": np.ones((1, sizes[0]), np.float32)}

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(address="local", num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build(AppArgs(repository=str(root), poll_interval_s=args.poll, model_control_mode="explicit"))
        serve.run(app, name="ric", route_prefix="/", external_scaler_enabled=True)
        handle = serve.get_deployment_handle("m", app_name="ric")
        for version in range(2, 2 + args.rounds):
            staging = root / "m" / f".staging-{version}"
            staging.mkdir()
            (staging / "model.onnx").write_bytes(onnx_mlp(sizes, seed=version))
            landed = time.perf_counter()
            os.rename(staging, root / "m" / str(version))
            first = everywhere = None
            streak = 0
            while time.perf_counter() - landed < 120:
                answered = handle.infer_versioned.remote(x).result()[0]
                now = time.perf_counter() - landed
                if answered == version:
                    first = first if first is not None else now
                    streak += 1
                    if streak == 40:
                        everywhere = now
                        break
                else:
                    streak = 0
            rows.append((version, first, everywhere))
        control = time_repository_control(f"http://127.0.0.1:{port}", root, sizes, args.replicas, args.rounds)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"model: MLP {'-'.join(map(str, sizes))}, {os.path.getsize(root / 'm' / '1' / 'model.onnx') / 2**20:.1f} MiB; "
          f"{args.replicas} replicas; poll interval {args.poll} s")
    print(f"load time in process (onnxruntime session): {load_s * 1000:.0f} ms")
    print("| version | first answer after landing | all replicas (40 answers in a row) |\n|---|---|---|")
    for version, first, everywhere in rows:
        fmt = lambda t: "not seen" if t is None else f"{t:.2f} s"  # noqa: E731
        print(f"| {version} | {fmt(first)} | {fmt(everywhere)} |")
    print("\n| repository API call (HTTP) | median of " + str(args.rounds) + " | all |\n|---|---|---|")
    for what, times in control.items():
        print(f"| {what} | {sorted(times)[len(times) // 2]:.2f} s | {', '.join(f'{t:.2f}' for t in times)} |")


def time_repository_control(server: str, root: Path, sizes, replicas: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per repository load / unload call, for the served model and for one new to the repository."""
    import requests

    from cluster.repository.examples import onnx_mlp

    (root / "fresh" / "1").mkdir(parents=True)
    (root / "fresh" / "config.pbtxt").write_text(
        f'platform: "onnxruntime_onnx" instance_group [ {{ count: {replicas} }} ]')
    (root / "fresh" / "1" / "model.onnx").write_bytes(onnx_mlp(sizes, seed=9))
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for what, model, action in [
            ("unload, a model the application was built with (scaled to zero)", "m", "unload"),
            ("load, a model the application was built with (scaled back)", "m", "load"),
            ("load, a model new to the repository (own application)", "fresh", "load"),
            ("unload, that model (application deleted)", "fresh", "unload"),
        ]:
            start = time.perf_counter()
            response = requests.post(f"{server}/v2/repository/models/{model}/{action}", timeout=300)
            response.raise_for_status()
            times.setdefault(what, []).append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    main()
