"""Python models inside the ingress without sharing its process (``colocate_python``): each runs in a stub
process of the ingress replica. HTTP requests reach it with no hop to the model's deployment; a crash in the
model's code fails the request in it (503) and nothing else, the next request starts a fresh stub; a batch
wedged past its execution timeout ends with its stub at the next health check, and the ingress replica is
never replaced."""

from __future__ import annotations

import psutil
import pytest
import requests

from cluster.cli.status import serve_details
from cluster.names import APP_NAME, INGRESS_NAME
from cluster.repository.examples import onnx_add_sub
from tests.conftest import FLAKY_PYTHON_MODEL, write_model
from tests.integration.conftest import serve_repository, wait_for

CONFIG = ("backend: python\nmax_batch_size: 4\ninput: [{name: X, data_type: TYPE_FP32, dims: [1]}]\n"
          "output: [{name: Y, data_type: TYPE_FP32, dims: [1]}, {name: PID, data_type: TYPE_INT64, dims: [1]}]\n"
          "parameters: {execution_timeout_s: {string_value: '2'}}\n")
SIMPLE = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                     for n in ("INPUT0", "INPUT1")]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "flaky", CONFIG, {"1/model.py": FLAKY_PYTHON_MODEL}, config_name="config.yaml")
    write_model(root, "simple", "", {"1/model.onnx": onnx_add_sub()})
    with serve_repository(root, num_cpus=4, colocate=True, colocate_python=True) as endpoints:
        yield endpoints.http


def flaky(server: str, value: float) -> requests.Response:
    body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [value]}]}
    return requests.post(f"{server}/v2/models/flaky/infer", json=body, timeout=60)


def replicas(deployment: str) -> dict[str, int]:
    """Actor name -> pid of a deployment's running replicas."""
    details = serve_details()["applications"][APP_NAME]["deployments"][deployment]
    return {r["actor_name"]: r["pid"] for r in details["replicas"] if r["state"] == "RUNNING"}


def test_a_python_model_in_the_ingress_runs_in_a_stub_process_of_the_ingress_replica(server):
    answer = flaky(server, 1.0)
    assert answer.status_code == 200, answer.text
    y, pid = (output["data"][0] for output in answer.json()["outputs"])
    (ingress,) = replicas(INGRESS_NAME).values()
    (own,) = replicas("flaky").values()
    assert y == 2.0 and pid not in (ingress, own)
    assert psutil.Process(pid).ppid() == ingress  # a child of the ingress replica, not the model's deployment


def test_a_crash_costs_the_request_in_it_only_and_the_next_request_gets_a_fresh_stub(server):
    ingress = replicas(INGRESS_NAME)
    before = flaky(server, 1.0).json()["outputs"][1]["data"][0]
    crashed = flaky(server, 13.0)
    assert crashed.status_code == 503, crashed.text
    assert "stub process exited (exit code 3)" in crashed.json()["error"]
    assert requests.post(f"{server}/v2/models/simple/infer", json=SIMPLE, timeout=60).status_code == 200
    again = flaky(server, 1.0)
    assert again.status_code == 200 and again.json()["outputs"][1]["data"][0] != before
    assert replicas(INGRESS_NAME) == ingress


def test_a_wedged_batch_ends_with_its_stub_and_the_ingress_replica_serves_on(server):
    ingress = replicas(INGRESS_NAME)
    wedged = flaky(server, 7.0)
    assert wedged.status_code == 503 and "execution_timeout_s" in wedged.json()["error"], wedged.text
    assert requests.post(f"{server}/v2/models/simple/infer", json=SIMPLE, timeout=60).status_code == 200
    # Serve's next health check of the ingress ends the stub; requests meanwhile wait behind the batch
    wait_for(lambda: flaky(server, 1.0).status_code == 200, timeout_s=90, what="the model answering again")
    assert replicas(INGRESS_NAME) == ingress
