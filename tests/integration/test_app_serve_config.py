"""``serve deploy configs/serve.yaml`` on a running Ray cluster serves the example repository on the ingress
replicas' own listeners (no Serve proxy), and models loaded later through the repository API stay loaded
across a second ``serve deploy``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import ray
import requests
import tritonclient.grpc as grpcclient
import yaml
from ray import serve

from tests.conftest import REPO_ROOT, start_local_ray
from tests.integration.conftest import free_port, wait_for


@pytest.fixture(scope="module")
def dashboard_url():
    port = free_port()
    start_local_ray(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
                    dashboard_port=port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_serve_deploy_serves_the_example_repository(dashboard_url, tmp_path):
    config = yaml.safe_load((REPO_ROOT / "configs" / "serve.yaml").read_text())
    args = config["applications"][0]["args"]
    assert config["proxy_location"] == "Disabled"  # the ingress replicas listen themselves
    http_port = args["http_port"] = free_port()  # the shipped file as it is, but on free ports
    grpc_port = args["grpc_port"] = free_port()
    # and without 'simple', which the repository API loads below
    config["applications"][0]["args"]["models"] = ["mlp", "linear_torch", "text_stats", "detect_classify"]
    config["applications"][0]["args"]["model_control_mode"] = "explicit"
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    deploy(path, dashboard_url)
    url = f"http://127.0.0.1:{http_port}"
    wait_for(lambda: requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200,
             timeout_s=180, what="the deployed application to be ready")
    index = requests.post(f"{url}/v2/repository/index", timeout=30).json()
    assert {row["name"] for row in index} >= {"mlp", "simple", "linear_torch", "text_stats"}
    body = {"inputs": [{"name": "INPUT__0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    response = requests.post(f"{url}/v2/models/linear_torch/infer", json=body, timeout=30)
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [1, 2]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert client.is_model_ready("linear_torch")

    # a model left out of the config loads beside the deployed application, and a second serve deploy of
    # the same file leaves it loaded (Serve only deletes applications that were deployed from a config)
    assert not client.is_model_ready("simple")
    client.load_model("simple")
    deploy(path, dashboard_url)  # returns once the controller has applied it (deletions begun)
    assert serve.status().applications["ric-model-simple"].status == "RUNNING"
    assert client.is_model_ready("simple")


def deploy(path, dashboard_url: str) -> None:
    deployed = subprocess.run([str(Path(sys.executable).parent / "serve"), "deploy", str(path), "-a", dashboard_url],
                              capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
