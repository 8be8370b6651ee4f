"""Fractional GPUs: a KIND_GPU instance group with gpu_fraction 0.25 packs four replicas on one GPU.

Ray is started with one logical GPU; the replicas run their model on the CPU (no CUDA here), which is
what a backend does when onnxruntime has no CUDA provider.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray import serve

from cluster.names import APP_NAME
from cluster.repository.examples import onnx_mlp
from tests.conftest import write_model
from tests.integration.conftest import serve_repository

CONFIG = """
platform: "onnxruntime_onnx"
instance_group [ { count: 4, kind: KIND_GPU } ]
parameters { key: "gpu_fraction" value { string_value: "0.25" } }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    write_model(root, "quarter", CONFIG, {"1/model.onnx": onnx_mlp()})
    with serve_repository(root, num_cpus=4, num_gpus=1) as endpoints:
        yield endpoints


def test_four_quarter_gpu_replicas_share_one_gpu(server):
    status = serve.status().applications[APP_NAME].deployments["quarter"]
    assert status.replica_states.get("RUNNING") == 4
    assert ray.cluster_resources()["GPU"] == 1
    assert ray.available_resources().get("GPU", 0) == pytest.approx(0)
    result = serve.get_deployment_handle("quarter", app_name=APP_NAME).infer.remote(
        {"INPUT0": np.ones((2, 64), np.float32)}).result()
    assert result["OUTPUT0"].shape == (2, 10)
