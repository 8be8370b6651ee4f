"""Node autoscaling with Ray's own autoscaler over fake nodes: a GPU model of quarter-GPU replicas packs four
per one-GPU node; under load it autoscales to eight replicas, the autoscaler adds a second GPU node for
them, and once the load ends the model shrinks and the idle GPU node goes. A CPU model that fits neither
the head nor a GPU node gets a CPU node. No request fails while nodes come and go."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
import ray
from ray import serve

from cluster.app import AppArgs, build
from cluster.names import APP_NAME
from cluster.repository.examples import onnx_mlp
from tests.cluster.conftest import autoscaling_nodes, replica_nodes, replica_states
from tests.conftest import write_model
from tests.integration.conftest import free_port, wait_for

GPU_MODEL = """
platform: "onnxruntime_onnx"
instance_group [ { count: 1, kind: KIND_GPU } ]
parameters { key: "gpu_fraction" value { string_value: "0.25" } }
""" + "".join(f'parameters {{ key: "autoscaling.{k}" value {{ string_value: "{v}" }} }}\n' for k, v in [
    ("min_replicas", 1), ("max_replicas", 8), ("target_ongoing_requests", 1), ("upscale_delay_s", 1),
    ("downscale_delay_s", 2), ("look_back_period_s", 2)])
CPU_MODEL = 'platform: "onnxruntime_onnx"\nparameters { key: "num_cpus" value { string_value: "2" } }\n'
# The head runs the ingress; a GPU node's one CPU holds exactly four quarter-GPU replicas (0.25 CPU each).
NODE_TYPES = {"gpu": {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 1, "max_workers": 2},
              "cpu": {"resources": {"CPU": 2}, "min_workers": 0, "max_workers": 1}}
pytestmark = pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("node-autoscaling")
    write_model(root, "gpu_model", GPU_MODEL, {"1/model.onnx": onnx_mlp(seed=1)})
    write_model(root, "cpu_model", CPU_MODEL, {"1/model.onnx": onnx_mlp(seed=2)})
    with autoscaling_nodes(root, head_cpus=1, node_types=NODE_TYPES, idle_timeout_s=5) as address:
        ray.init(address=address, log_to_driver=False)
        try:
            wait_for(lambda: len(gpu_nodes()) == 1, timeout_s=120, what="the first GPU node (min_workers 1)")
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": free_port()})
            serve.run(build(AppArgs(repository=str(root))), name=APP_NAME, route_prefix="/")
            yield
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()


def alive() -> list[dict]:
    return [node for node in ray.nodes() if node["Alive"]]


def gpu_nodes() -> list[str]:
    return [node["NodeID"] for node in alive() if node["Resources"].get("GPU")]


def test_the_cpu_model_gets_a_cpu_node(app):
    (node,) = replica_nodes("cpu_model")
    resources = next(n["Resources"] for n in alive() if n["NodeID"] == node)
    assert resources.get("CPU") == 2 and not resources.get("GPU")


# Ray's workers cannot import this test module: the actor below travels by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@ray.remote(num_cpus=0)
class Load:
    """Calls the model from a process of the cluster, 12 calls in flight at all times until stopped (a
    steady load: bursts with pauses between them averaged too little over Serve's look-back window to
    scale to eight replicas in some runs). Its handle pushes the autoscaling metrics Serve scales on (every
    10 s: Serve 2.60 reads no push-interval setting). The handle is made ready here, on one thread, by a
    first call: a handle builds its router on first use without a lock, and twelve threads making that first
    call at once built two (two "Started SharedRouterLongPollClient" in the actor's log), after which Serve
    kept the model at one replica for the whole load in some runs (CI)."""

    def __init__(self):
        self.infer = serve.get_deployment_handle("gpu_model", app_name=APP_NAME).options(method_name="infer")
        self.infer.remote({"INPUT0": np.ones((1, 64), np.float32)}).result(timeout_s=120)
        self.stopping = threading.Event()
        self.failures: list[str] = []
        self.calls = 0
        self.callers = [threading.Thread(target=self._call_until_stopped, daemon=True) for _ in range(12)]
        for caller in self.callers:
            caller.start()

    def _call_until_stopped(self) -> None:
        x = {"INPUT0": np.ones((1, 64), np.float32)}
        while not self.stopping.is_set():
            try:
                assert self.infer.remote(x).result(timeout_s=120)["OUTPUT0"].shape == (1, 10)
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                self.failures.append(repr(exc))
            self.calls += 1

    def stop(self) -> tuple[int, list[str]]:
        """Stop calling; the calls made and the failures."""
        self.stopping.set()
        for caller in self.callers:
            caller.join(timeout=150)
        return self.calls, self.failures


@pytest.mark.timeout(900)  # nodes and eight replicas starting on 2 cores take minutes when the machine is busy
def test_gpu_replicas_pack_four_per_node_and_the_autoscaler_adds_and_removes_a_gpu_node(app):
    handle = serve.get_deployment_handle("gpu_model", app_name=APP_NAME)
    x = {"INPUT0": np.ones((1, 64), np.float32)}
    load = Load.remote()
    started = time.monotonic()
    deadline = time.monotonic() + 480
    while sum(replica_nodes("gpu_model").values()) < 8 and time.monotonic() < deadline:
        time.sleep(1.0)
    grown = time.monotonic() - started
    calls, failures = ray.get(load.stop.remote(), timeout=300)
    ray.kill(load)
    assert sorted(replica_nodes("gpu_model").values()) == [4, 4], (
        f"after {grown:.0f} s and {calls} calls ({len(failures)} failed): running {replica_nodes('gpu_model')}, "
        f"all {replica_states('gpu_model')}, GPU nodes {len(gpu_nodes())}, failures {failures[:2]}")
    assert len(gpu_nodes()) == 2
    idle = time.monotonic()
    wait_for(lambda: len(gpu_nodes()) == 1, timeout_s=240,
             what=lambda: f"the idle GPU node to go: {len(gpu_nodes())} GPU nodes, {replica_nodes('gpu_model')}")
    assert not failures, failures[:3]
    assert handle.infer.remote(x).result(timeout_s=120)["OUTPUT0"].shape == (1, 10)
    print(f"1 -> 8 replicas over 2 GPU nodes in {grown:.1f} s ({calls} calls, 0 failed); "
          f"idle GPU node removed {time.monotonic() - idle:.1f} s after the load ended")
