"""The other placement of a model that autoscales: with ``ingress_autoscaling`` and colocation on, the model
is copied into every ingress replica and those copies follow the ingress's load. A load ramp over HTTP grows
the ingress (and so the model's copies) from one replica to more and idle time shrinks it back, with no
failed request; the model's own deployment, which only handles from other Ray jobs and ensembles call, stays
at its minimum."""

from __future__ import annotations

import time

import pytest
import requests
from ray import serve

from cluster.names import APP_NAME, INGRESS_NAME
from tests.conftest import write_model
from tests.integration.conftest import serve_repository, wait_for
from tests.integration.test_app_autoscaling import FAST, SLOW, Load, running

pytestmark = pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "grow", "backend: python\nmax_batch_size: 4\n"
                "input: [{name: X, data_type: TYPE_FP32, dims: [1]}]\noutput: [{name: Y, data_type: TYPE_FP32, dims: [1]}]\n"
                f"autoscaling: {{min_replicas: 1, max_replicas: 3, {FAST}}}\n", {"1/model.py": SLOW},
                config_name="config.yaml")
    ingress_autoscaling = {"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 1, "downscale_delay_s": 3,
                           "look_back_period_s": 2, "target_ongoing_requests": 2}
    with serve_repository(root, num_cpus=4, colocate=True, colocate_python=True,
                          ingress_autoscaling=ingress_autoscaling) as endpoints:
        yield endpoints


def test_a_load_ramp_grows_the_ingress_with_its_model_copies_and_idle_time_shrinks_it(server):
    assert running(INGRESS_NAME) == 1 and running("grow") == 1
    started = time.monotonic()
    with Load(f"{server.http}/v2/models/grow/infer", clients=8) as load:
        wait_for(lambda: running(INGRESS_NAME) >= 2, timeout_s=120,
                 what=lambda: f"the ingress to scale up: {running(INGRESS_NAME)}")
        grown = time.monotonic() - started
        wait_for(lambda: load.ok > 50, timeout_s=60, what="answers from the grown ingress")
        assert running("grow") == 1  # the HTTP load ran on the copies, not on the model's own replicas
    assert load.failed == 0, load.errors[:3]
    idle = time.monotonic()
    wait_for(lambda: serve.status().applications[APP_NAME].deployments[INGRESS_NAME].replica_states == {"RUNNING": 1},
             timeout_s=120, what=lambda: f"the ingress to scale down: {running(INGRESS_NAME)}")
    print(f"ingress scale-up {grown:.1f} s, scale-down {time.monotonic() - idle:.1f} s, {load.ok} answers, 0 failed")
    response = requests.post(f"{server.http}/v2/models/grow/infer", timeout=60,
                             json={"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]})
    assert response.status_code == 200, response.text
