"""Running ric as a Ray cluster, measured in one run and written to docs/benchmarks.md (generated section):

    python benchmarks/cluster_operation.py

Starts the real ``ric serve`` on a repository with the tiny MLP (64-256-10), a 4 MB identity model and a
model that autoscales, then measures: start-up time; handle calls from another Ray job (``ric perf
--protocol handle``, its own process, joined with ``cluster.client.connect``) beside HTTP binary, for the
tiny model and for the 4 MB tensor; the autoscaled model's scale-up under a load ramp and its scale-down
once the load ends, with the requests that failed during both; and how long ``ric serve`` takes to stop
by a signal to its whole process group, and what it leaves behind. Then a second ``ric serve`` of the
autoscaled model alone with ``--ingress-autoscaling``, the model's other placement (copies in the ingress
replicas, which scale with the ingress's load), through the same ramp.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from cluster.names import APP_NAME, INGRESS_NAME  # noqa: E402

BIN = Path(sys.executable).parent
SLOW = "import time\n\ndef infer(inputs):\n    time.sleep(0.05)\n    return {'Y': inputs['X'] + 1}\n"
AUTOSCALING = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1, "upscale_delay_s": 1,
               "downscale_delay_s": 3, "look_back_period_s": 2}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def onnx_identity(elements: int) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [1, elements])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [1, elements])
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "identity", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def repository() -> Path:
    from cluster.repository.examples import onnx_mlp

    root = Path(tempfile.mkdtemp(prefix="ric-cluster-operation-"))
    for name, files, config in [
        ("tiny", {"1/model.onnx": onnx_mlp((64, 256, 10))},
         'max_batch_size: 64\ndynamic_batching { }\nparameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'),
        ("identity4mb", {"1/model.onnx": onnx_identity(1 << 20)}, "max_batch_size: 0\n"),
        ("grow", {"1/model.py": SLOW},
         'backend: "python"\nmax_batch_size: 4\ninput [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
         'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
         + "".join(f'parameters {{ key: "autoscaling.{k}" value {{ string_value: "{v}" }} }}\n'
                   for k, v in AUTOSCALING.items())),
    ]:
        for relative, data in files.items():
            path = root / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.encode() if isinstance(data, str) else data)
        (root / name / "config.pbtxt").write_text(config)
    return root


class Server:
    """``ric serve`` in its own process group, its output collected."""

    def __init__(self, root: Path, home: Path, extra: tuple[str, ...] = ()):
        self.http, self.grpc, self.dashboard = free_port(), free_port(), free_port()
        env = {**os.environ, "HOME": str(home)}
        env = {k: v for k, v in env.items() if not k.startswith(("RAY_SERVE_ENABLE", "RAY_SERVE_THROUGHPUT", "RAY_ENABLE"))}
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(BIN / "ric"), "serve", str(root), "--http-port", str(self.http), "--grpc-port", str(self.grpc),
             "--dashboard-port", str(self.dashboard), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()
        self.env = env

    def wait_serving(self, timeout_s: float = 300) -> float:
        deadline = time.monotonic() + timeout_s
        while not any(line.startswith("ric: serving") for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ric serve did not start:\n" + "".join(self.lines)[-3000:])
            time.sleep(0.2)
        return time.monotonic() - self.started

    def stop_group(self) -> tuple[float, list[str]]:
        import psutil

        below = psutil.Process(self.process.pid).children(recursive=True)
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=120)
        seconds = time.monotonic() - started
        left = [p.name() for p in below if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        return seconds, left


def perf(server: Server, model: str, protocols: list[str], concurrency: list[int], seconds: float) -> list[dict]:
    out = Path(tempfile.mktemp(suffix=".json"))
    done = subprocess.run(
        [str(BIN / "ric"), "perf", model, "--url", f"http://127.0.0.1:{server.http}", "--protocol", *protocols,
         "--concurrency", *map(str, concurrency), "--seconds", str(seconds), "--json", str(out)],
        env=server.env, capture_output=True, text=True,
        timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"ric perf {model} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(out.read_text())


def running(deployment: str) -> int:
    from ray import serve

    return serve.status().applications[APP_NAME].deployments[deployment].replica_states.get("RUNNING", 0)


def autoscaling_ramp(server: Server, clients: int, deployment: str) -> dict[str, float]:
    """All clients on the model ``grow`` until the deployment that serves its HTTP requests runs a second
    replica (and 5 s more), then one client until one replica is left: the times of both, the requests
    answered and failed in each, and the requests per second while loaded."""
    import requests

    body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    url = f"http://127.0.0.1:{server.http}/v2/models/grow/infer"
    counts = {"ok": 0, "failed": 0}
    stops = [threading.Event() for _ in range(clients)]

    def client(stop: threading.Event) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    ok = session.post(url, json=body, timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                counts["ok" if ok else "failed"] += 1

    threads = [threading.Thread(target=client, args=(stop,), daemon=True) for stop in stops]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    while running(deployment) < 2 and time.monotonic() - started < 180:
        time.sleep(0.2)
    scale_up = time.monotonic() - started
    time.sleep(5)  # the grown model serves under load
    for stop in stops[1:]:
        stop.set()
    for thread in threads[1:]:
        thread.join(timeout=70)
    up = dict(counts)
    loaded_s = time.monotonic() - started
    light = time.monotonic()
    while running(deployment) > 1 and time.monotonic() - light < 180:
        time.sleep(0.2)
    scale_down = time.monotonic() - light
    stops[0].set()
    threads[0].join(timeout=70)
    return {"scale_up_s": scale_up, "scale_down_s": scale_down, "answered_up": up["ok"], "failed_up": up["failed"],
            "loaded_per_s": up["ok"] / loaded_s,
            "answered_down": counts["ok"] - up["ok"], "failed_down": counts["failed"] - up["failed"]}


def render(results: dict) -> str:
    machine = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    lines = [
        "## Cluster operation (generated)", "",
        f"`python benchmarks/cluster_operation.py` ({time.strftime('%Y-%m-%d')}, {machine}; the real `ric serve`, "
        "the client on the same machine).", "",
        f"- Start-up of `ric serve` with three models, to \"serving\": {results['startup_s']:.1f} s.",
        f"- Stop by SIGTERM to its process group: {results['stop_s']:.1f} s to process exit; processes left: "
        f"{len(results['left'])}.", "",
        "Handle calls from another Ray job (`ric perf --protocol handle`, its own process joined with "
        "`cluster.client.connect`) beside HTTP binary, same run:", "",
        "| model | protocol | concurrency | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|",
    ]
    for cell in results["perf"]:
        lines.append(f"| {cell['label'].split()[0]} | {cell['protocol']} | {cell['concurrency']} | "
                     f"{cell['requests_per_s']:.1f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | {cell['errors']} |")
    lines += [
        "", f"Replica autoscaling of a 50 ms model ({json.dumps(AUTOSCALING)}; autoscaling metrics pushed every 10 s, "
        "Serve 2.60's fixed interval), "
        f"{results['clients']} HTTP clients, then one client while it shrinks, in both placements: the model's own "
        "deployment autoscaling (the default), and copies in the ingress replicas with the ingress autoscaling on "
        "the same settings (`ric serve --colocate-python --ingress-autoscaling ...`, the model alone):", "",
        "| placement | phase | time | answered | failed | req/s while loaded |", "|---|---|---|---|---|---|",
    ]
    for placement, ramp in [("own deployment", results["ramp"]), ("ingress copies", results["ingress_ramp"])]:
        lines += [
            f"| {placement} | scale-up: load starts -> 2nd replica running (then 5 s more) | {ramp['scale_up_s']:.1f} s | "
            f"{ramp['answered_up']} | {ramp['failed_up']} | {ramp['loaded_per_s']:.1f} |",
            f"| {placement} | scale-down: load drops to one client -> 1 replica | {ramp['scale_down_s']:.1f} s | "
            f"{ramp['answered_down']} | {ramp['failed_down']} | |",
        ]
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per perf cell")
    parser.add_argument("--clients", type=int, default=8, help="HTTP clients of the autoscaling ramp")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()

    home, root = Path(tempfile.mkdtemp(prefix="ric-home-")), repository()
    server = Server(root, home)
    results = {"clients": args.clients, "startup_s": server.wait_serving()}
    try:
        results["perf"] = (perf(server, "tiny", ["http-binary", "handle"], [1, 16], args.seconds)
                           + perf(server, "identity4mb", ["http-binary", "handle"], [1, 4], args.seconds))
        os.environ["HOME"] = str(home)  # connect() finds this ric serve's record
        from cluster.client import connect

        connect()
        results["ramp"] = autoscaling_ramp(server, args.clients, "grow")
    finally:
        results["stop_s"], results["left"] = server.stop_group()
    import ray

    ray.shutdown()
    ingress_scaling = ",".join(f"{key}={value}" for key, value in AUTOSCALING.items())
    server = Server(root, home, ("--models", "grow", "--colocate-python", "--ingress-autoscaling", ingress_scaling))
    try:
        server.wait_serving()
        connect()
        results["ingress_ramp"] = autoscaling_ramp(server, args.clients, INGRESS_NAME)
    finally:
        server.stop_group()
    section = render(results)
    print(section)
    report.write_section(Path(args.out), section, source="benchmarks/cluster_operation.py")


if __name__ == "__main__":
    main()
