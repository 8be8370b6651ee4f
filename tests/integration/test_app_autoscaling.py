"""Replica autoscaling per model, mapped onto Serve's autoscaling_config: a load ramp over HTTP grows a
model from one replica to more and idle time shrinks it back, with no failed request; a model with
``min_replicas: 0`` sleeps at zero replicas (readiness, the index and statistics do not wake it) and its
first request waits for a replica instead of failing. Both run with colocation on: a model that autoscales
keeps to its own deployment."""

from __future__ import annotations

import threading
import time

import pytest
import requests
from ray import serve

from cluster.names import APP_NAME, model_app_name
from tests.conftest import write_model
from tests.integration.conftest import serve_repository, wait_for

SLOW = """
import time

def infer(inputs):
    time.sleep(0.05)
    return {"Y": inputs["X"] + 1}
"""

TENSORS = 'input [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ] output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]'
FAST = "upscale_delay_s: 1, downscale_delay_s: 3, look_back_period_s: 2, target_ongoing_requests: 1"
# Serve 2.60 compares look_back_period_s with its deprecated metrics_interval_s (10 s, also the interval its
# handles push autoscaling metrics at: it reads no push-interval setting); the short window keeps this test quick.
pytestmark = pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")

BODY = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}


def sleepy_config(name: str) -> str:
    """A pbtxt config that autoscales between zero and one replica, in the parameters form."""
    params = "".join(f'parameters {{ key: "autoscaling.{k}" value {{ string_value: "{v}" }} }}\n'
                     for k, v in [("min_replicas", 0), ("max_replicas", 1), ("downscale_delay_s", 3),
                                  ("upscale_delay_s", 0), ("look_back_period_s", 2)])
    return f'name: "{name}"\nbackend: "python"\nmax_batch_size: 4\n{TENSORS}\n{params}'


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("repository")


@pytest.fixture(scope="module")
def server(root):
    write_model(root, "grow", "backend: python\nmax_batch_size: 4\n"
                "input: [{name: X, data_type: TYPE_FP32, dims: [1]}]\noutput: [{name: Y, data_type: TYPE_FP32, dims: [1]}]\n"
                f"autoscaling: {{min_replicas: 1, max_replicas: 3, {FAST}}}\n", {"1/model.py": SLOW},
                config_name="config.yaml")
    write_model(root, "sleepy", sleepy_config("sleepy"), {"1/model.py": SLOW})
    with serve_repository(root, num_cpus=4, colocate=True, model_control_mode="explicit") as endpoints:
        yield endpoints


def running(model: str, app: str = APP_NAME) -> int:
    deployment = serve.status().applications[app].deployments[model]
    return deployment.replica_states.get("RUNNING", 0)


class Load:
    """Closed-loop HTTP clients that count answers and failures until stopped."""

    def __init__(self, url: str, clients: int):
        self.url, self.ok, self.failed, self.errors = url, 0, 0, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    response = session.post(self.url, json=BODY, timeout=60)
                    if response.status_code == 200 and response.json()["outputs"][0]["data"] == [2.0]:
                        self.ok += 1
                    else:
                        self.failed += 1
                        self.errors.append(response.text[:200])
                except requests.RequestException as exc:
                    self.failed += 1
                    self.errors.append(repr(exc))

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=70)


def test_a_load_ramp_grows_the_model_and_idle_time_shrinks_it(server):
    assert running("grow") == 1
    started = time.monotonic()
    with Load(f"{server.http}/v2/models/grow/infer", clients=8) as load:
        wait_for(lambda: running("grow") >= 2, timeout_s=120, what=lambda: f"grow to scale up: {running('grow')}")
        grown = time.monotonic() - started
        wait_for(lambda: load.ok > 50, timeout_s=60, what="answers from the grown model")
    assert load.failed == 0, load.errors[:3]
    idle = time.monotonic()
    wait_for(lambda: running("grow") == 1 and serve.status().applications[APP_NAME].deployments["grow"]
             .replica_states == {"RUNNING": 1}, timeout_s=120, what=lambda: f"grow to scale down: {running('grow')}")
    print(f"scale-up {grown:.1f} s, scale-down {time.monotonic() - idle:.1f} s, {load.ok} answers, 0 failed")


def assert_readiness_index_and_statistics_leave_it_asleep(server, model: str, app: str = APP_NAME) -> None:
    assert requests.get(f"{server.http}/v2/health/ready", timeout=30).status_code == 200
    index = requests.post(f"{server.http}/v2/repository/index", json={}, timeout=30).json()
    assert {"name": model, "version": "", "state": "READY",
            "reason": "scaled to zero when idle: a request starts a replica"} in index
    assert requests.get(f"{server.http}/v2/models/stats", timeout=30).ok
    time.sleep(2)  # long enough for a stray call to have started a replica
    assert running(model, app) == 0


def test_a_model_at_zero_replicas_sleeps_until_a_request_wakes_it(server):
    wait_for(lambda: running("sleepy") == 0, timeout_s=60, what="sleepy to start at zero replicas")
    assert_readiness_index_and_statistics_leave_it_asleep(server, "sleepy")
    response = requests.post(f"{server.http}/v2/models/sleepy/infer", json=BODY, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2.0]
    assert running("sleepy") == 1
    wait_for(lambda: running("sleepy") == 0, timeout_s=120, what="sleepy to go back to zero")


def test_a_model_loaded_later_that_scales_to_zero_also_sleeps(server, root):
    """A model new to the repository runs as an application of its own; the ingress learns from the sync
    that it scales to zero, so readiness, the index and statistics leave it asleep too."""
    write_model(root, "drowsy", sleepy_config("drowsy"), {"1/model.py": SLOW})
    response = requests.post(f"{server.http}/v2/repository/models/drowsy/load", json={}, timeout=180)
    assert response.status_code == 200, response.text
    app = model_app_name(APP_NAME, "drowsy")
    wait_for(lambda: running("drowsy", app) == 0, timeout_s=120, what="drowsy to scale down to zero")
    assert_readiness_index_and_statistics_leave_it_asleep(server, "drowsy", app)
    response = requests.post(f"{server.http}/v2/models/drowsy/infer", json=BODY, timeout=120)
    assert response.status_code == 200, response.text
