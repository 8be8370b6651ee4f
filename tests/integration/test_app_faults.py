"""Faults that fail cleanly: a model replica killed while it holds requests answers those requests 503 (the
replica was lost, retry), never 500 or a hang; Serve starts another replica and later requests succeed. A
backend that hangs answers 503 after its execution timeout and fails its replica's health check, so Serve
replaces the replica; the other models answer meanwhile. Many large JSON bodies at once answer 503 past the
ingress's in-flight memory limit (413 for one that could never fit) while small requests are served. A
killed statistics collector is replaced and has the live replicas' totals back within a heartbeat. Requests
past their queue policy's timeout are rejected.
Colocation is on, as in ric serve: the ONNX model runs inside the ingress too, while Python models keep to
their own deployments, so a Python model that takes its process down leaves HTTP and gRPC answering."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
import requests

from cluster.cli.status import serve_details
from cluster.names import APP_NAME
from cluster.repository.examples import onnx_mlp
from tests.conftest import write_model
from tests.integration.conftest import serve_repository, wait_for

SLOW = """
import time

def infer(inputs):
    time.sleep(1.5)
    return {"Y": inputs["X"] + 1}
"""
HANG = """
import time

def infer(inputs):
    time.sleep(3600)  # a backend that never returns
"""
CRASH = """
import os

def infer(inputs):
    os._exit(1)  # a backend that takes its process down
"""
#: The ingress's in-flight memory limit here: two 2.5 MB JSON requests (~60 MB to decode each) fit at once.
INFLIGHT_LIMIT = 128 << 20
BODY = {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "slow", "backend: python\ninput: [{name: X, data_type: TYPE_FP32, dims: [1]}]\n"
                "output: [{name: Y, data_type: TYPE_FP32, dims: [1]}]\n", {"1/model.py": SLOW},
                config_name="config.yaml")
    write_model(root, "hang", "backend: python\ninput: [{name: X, data_type: TYPE_FP32, dims: [1]}]\n"
                "output: [{name: Y, data_type: TYPE_FP32, dims: [1]}]\n"
                "parameters: {execution_timeout_s: {string_value: '2'}}\n", {"1/model.py": HANG},
                config_name="config.yaml")
    write_model(root, "crash", "backend: python\ninput: [{name: X, data_type: TYPE_FP32, dims: [1]}]\n"
                "output: [{name: Y, data_type: TYPE_FP32, dims: [1]}]\n", {"1/model.py": CRASH},
                config_name="config.yaml")
    write_model(root, "queued", "backend: python\nmax_batch_size: 1\n"
                "input: [{name: X, data_type: TYPE_FP32, dims: [1]}]\noutput: [{name: Y, data_type: TYPE_FP32, dims: [1]}]\n"
                "dynamic_batching: {default_queue_policy: {default_timeout_microseconds: 300000}}\n",
                {"1/model.py": SLOW}, config_name="config.yaml")
    write_model(root, "mlp", 'platform: "onnxruntime_onnx" max_batch_size: 0 '
                'input [ { name: "INPUT0", data_type: TYPE_FP32, dims: [ -1, 64 ] } ] '
                'output [ { name: "OUTPUT0", data_type: TYPE_FP32, dims: [ -1, 10 ] } ]', {"1/model.onnx": onnx_mlp()})
    with serve_repository(root, num_cpus=4, colocate=True, max_inflight_bytes=INFLIGHT_LIMIT) as endpoints:
        yield endpoints


def replica_actors(model: str) -> list[str]:
    deployment = serve_details()["applications"][APP_NAME]["deployments"][model]
    return [r["actor_name"] for r in deployment["replicas"] if r["state"] == "RUNNING"]


def test_requests_held_by_a_killed_replica_answer_503_and_the_next_ones_succeed(server):
    url = f"{server.http}/v2/models/slow/infer"
    assert requests.post(url, json=BODY, timeout=60).status_code == 200
    (actor,) = replica_actors("slow")
    answers: list[tuple[int, dict]] = []

    def call() -> None:
        response = requests.post(url, json=BODY, timeout=120)
        answers.append((response.status_code, response.json()))

    callers = [threading.Thread(target=call) for _ in range(3)]
    for caller in callers:
        caller.start()
    time.sleep(0.7)  # the first request is running in the replica, the others wait there for it
    ray.kill(ray.get_actor(actor, namespace="serve"), no_restart=True)
    for caller in callers:
        caller.join(timeout=150)
    assert len(answers) == 3, "a request hung"
    lost = [body for code, body in answers if code == 503]
    assert lost, answers
    assert all(code in (200, 503) for code, _ in answers), answers
    assert all("the replica serving this request was lost" in body["error"] for body in lost), lost
    wait_for(lambda: replica_actors("slow") and replica_actors("slow") != [actor], timeout_s=120,
             what="Serve to start another replica")
    response = requests.post(url, json=BODY, timeout=120)
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [2.0], response.text
    print(f"answers while the replica was killed: {sorted(code for code, _ in answers)}")


def test_a_backend_that_hangs_times_out_and_its_replica_is_replaced(server):
    (actor,) = replica_actors("hang")
    started = time.monotonic()
    response = requests.post(f"{server.http}/v2/models/hang/infer", json=BODY, timeout=120)
    waited = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert "did not answer within 2 s (execution_timeout_s)" in response.json()["error"]
    assert requests.post(f"{server.http}/v2/models/slow/infer", json=BODY, timeout=60).status_code == 200
    wait_for(lambda: replica_actors("hang") and replica_actors("hang") != [actor], timeout_s=120,
             what="Serve to replace the wedged replica")
    print(f"the hung request answered 503 after {waited:.1f} s; the replica was replaced "
          f"{time.monotonic() - started:.1f} s after it started")


def test_a_python_model_that_crashes_its_process_leaves_the_other_models_answering(server):
    response = requests.post(f"{server.http}/v2/models/crash/infer", json=BODY, timeout=120)
    assert response.status_code == 503 and "was lost" in response.json()["error"], response.text
    mlp = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
    for _ in range(5):
        assert requests.post(f"{server.http}/v2/models/mlp/infer", json=mlp, timeout=30).status_code == 200
    assert requests.post(f"{server.http}/v2/models/slow/infer", json=BODY, timeout=60).status_code == 200


def mlp_body(rows: int) -> bytes:
    return json.dumps({"inputs": [{"name": "INPUT0", "shape": [rows, 64], "datatype": "FP32",
                                   "data": [0.5] * (rows * 64)}]}).encode()


def test_large_json_bodies_past_the_memory_limit_answer_503_and_small_requests_are_served(server):
    url = f"{server.http}/v2/models/mlp/infer"
    never = requests.post(url, data=mlp_body(4 * 8192), timeout=60)  # ~10 MB of JSON: ~240 MB to decode
    assert never.status_code == 413 and "in-flight limit" in never.json()["error"], never.text
    large, small = mlp_body(8192), mlp_body(1)
    codes: list[int] = []
    small_codes: list[int] = []

    def send_large() -> None:
        response = requests.post(url, data=large, timeout=120)
        codes.append(response.status_code)
        assert response.status_code == 200 or "the server is busy" in response.json()["error"]

    burst = [threading.Thread(target=send_large) for _ in range(30)]
    for thread in burst:
        thread.start()
    while any(thread.is_alive() for thread in burst):
        small_codes.append(requests.post(url, data=small, timeout=60).status_code)
    for thread in burst:
        thread.join()
    assert len(codes) == 30 and set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    assert small_codes and set(small_codes) == {200}, small_codes
    print(f"30 large JSON bodies at once: {codes.count(200)} answered, {codes.count(503)} refused (503); "
          f"{len(small_codes)} small requests meanwhile, all answered")


def test_a_restarted_statistics_collector_has_the_live_replicas_totals_back_within_a_heartbeat(server):
    from cluster.names import STATISTICS_NAME
    from deployments.observability.statistics import HEARTBEAT_S

    url = f"{server.http}/v2/models/mlp/stats"

    def successes() -> int:
        return sum(row["inference_stats"]["success"]["count"] for row in requests.get(url, timeout=30).json()["model_stats"])

    for _ in range(5):
        assert requests.post(f"{server.http}/v2/models/mlp/infer", data=mlp_body(1), timeout=30).status_code == 200
    wait_for(lambda: successes() >= 5, timeout_s=30, what="the requests in the statistics")
    before = successes()
    (actor,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{STATISTICS_NAME}#" in a["name"]]
    ray.kill(ray.get_actor(actor, namespace="serve"), no_restart=True)
    started = time.monotonic()
    wait_for(lambda: successes() >= before, timeout_s=3 * HEARTBEAT_S + 60,
             what=lambda: f"the totals back after the collector's restart: {before} before")
    print(f"statistics back {time.monotonic() - started:.1f} s after the collector was killed")


def test_requests_past_their_queue_timeout_are_rejected_and_the_first_answers(server):
    """Triton's queue policy: a request still waiting after default_timeout_microseconds (0.3 s here, behind
    1.5 s batches of one) answers 503 "request timeout expired" and never runs."""
    body = {"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: requests.post(f"{server.http}/v2/models/queued/infer", json=body,
                                                          timeout=60), range(4)))
    codes = sorted(r.status_code for r in responses)
    assert codes[0] == 200 and 503 in codes, [r.text for r in responses]
    expired = [r.json()["error"] for r in responses if r.status_code == 503]
    assert all("request timeout expired" in error for error in expired), expired
    assert requests.post(f"{server.http}/v2/models/queued/infer", json=body, timeout=60).status_code == 200
