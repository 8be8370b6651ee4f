"""Operating live models on a real Ray + Serve: a traffic split between versions (from the config, changed
live with `ric traffic`, kept across a restart of the sync), shadow copies compared and counted, and payloads
logged to a real S3 server (moto's, over HTTP) that is killed mid-run, and drift scored against a reference."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pandas
import pytest
import requests

from cluster.repository.examples import onnx_mlp
from deployments.operations.drift import profile_of
from tests.conftest import write_model
from tests.integration.conftest import moto_s3, serve_repository, start_moto, stop_moto, wait_for

X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": X.ravel().tolist()}]}
MLP = 'platform: "onnxruntime_onnx" max_batch_size: 8 dynamic_batching { } '
ALL = "version_policy { all { } } "
PAYLOADS = "payloads"
SLOW = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.3)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.zeros((1, 10), np.float32))])
                for _ in requests]
"""


def param(key: str, value) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }} '


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("operations")
    two = {"1/model.onnx": onnx_mlp(seed=1), "2/model.onnx": onnx_mlp(seed=2)}
    write_model(root, "canary", MLP + ALL + param("traffic.weights", "1:80,2:20"), two)
    # version 2 is version 1 again: its copies agree
    write_model(root, "agreeing", MLP + ALL + param("traffic.weights", "1:1") + param("shadow.version", 2),
                {"1/model.onnx": onnx_mlp(seed=1), "2/model.onnx": onnx_mlp(seed=1)})
    write_model(root, "differing", MLP + param("shadow.model", "other"), {"1/model.onnx": onnx_mlp(seed=1)})
    write_model(root, "other", MLP, {"1/model.onnx": onnx_mlp(seed=3)})
    write_model(root, "hurried", MLP + param("shadow.model", "slow") + param("shadow.queue_size", 2),
                {"1/model.onnx": onnx_mlp(seed=1)})
    write_model(root, "slow", 'backend: "python" max_batch_size: 8 input [ { name: "INPUT0" data_type: TYPE_FP32 '
                'dims: [ 64 ] } ] output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 10 ] } ]',
                {"1/model.py": SLOW})
    write_model(root, "by_header", MLP + ALL + param("traffic.weights", "1:1,2:1") + param("traffic.sticky_by", "x-user"),
                two)
    write_model(root, "logged", MLP + param("payload_log.sample_rate", 1) + param("payload_log.queue_size", 100)
                + param("payload_log.redact", "OUTPUT0"), {"1/model.onnx": onnx_mlp(seed=1)})
    profile = json.dumps(profile_of({"INPUT0": np.random.default_rng(1).normal(0, 1, (2000, 64))}))
    for model in ("steady", "drifting"):
        write_model(root, model, MLP + param("drift.reference", "reference.json") + param("drift.threshold", 0.25),
                    {"1/model.onnx": onnx_mlp(seed=1), "reference.json": profile})
    write_model(root, "learned", MLP + param("drift.reference_requests", 40), {"1/model.onnx": onnx_mlp(seed=1)})
    with moto_s3() as (moto, port):
        boto3.client("s3").create_bucket(Bucket=PAYLOADS)
        # colocated as `ric serve` runs them: the ONNX models in the ingress (shadow copies in process), the
        # Python candidate in its own deployment (copies through its handle)
        with serve_repository(root, model_control_mode="explicit", payload_log=f"s3://{PAYLOADS}/run", colocate=True,
                              http_header_forward_pattern="^x-user$", grpc_header_forward_pattern="^x-user$"
                              ) as endpoints:
            served = Served(endpoints.http, endpoints.grpc, moto, port)
            try:
                yield served
            finally:
                stop_moto(served.moto)  # (the test restarts it)


@dataclass
class Served:
    http: str
    grpc: str
    moto: subprocess.Popen
    moto_port: int


def answered_versions(url: str, model: str, n: int, parameters: dict | None = None) -> list[str]:
    session, versions = requests.Session(), []
    body = {**BODY, "parameters": parameters} if parameters else BODY
    for _ in range(n):
        reply = session.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        versions.append(reply.json()["model_version"])
    return versions


def stats(url: str, model: str) -> dict[str, dict]:
    rows = requests.get(f"{url}/v2/models/{model}/stats", timeout=30).json()["model_stats"]
    return {row["version"]: row for row in rows}


def ric_traffic(url: str, *args: str) -> subprocess.CompletedProcess:
    """The ``ric traffic`` command, as a user runs it."""
    return subprocess.run([str(Path(sys.executable).parent / "ric"), "traffic", *args, "--url", url],
                          capture_output=True, text=True, timeout=180)


def test_requests_follow_the_configured_split_and_its_live_changes_fail_nothing(server):
    url = server.http
    before = {v: row["inference_stats"]["success"]["count"] for v, row in stats(url, "canary").items()}
    versions = answered_versions(url, "canary", 1000)
    share = versions.count("2") / len(versions)
    assert 0.15 < share < 0.25, share  # 20 %, sd 1.3 % at n=1000
    # the statistics count each version's requests, and none failed
    after = stats(url, "canary")
    assert {v: after[v]["inference_stats"]["success"]["count"] - before.get(v, 0) for v in ("1", "2")} == {
        "1": versions.count("1"), "2": versions.count("2")}
    assert all(row["inference_stats"]["fail"]["count"] == 0 for row in after.values())

    # a user promotes version 2 while requests keep coming: none fails
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        load = pool.submit(answered_versions, url, "canary", 300)
        time.sleep(0.3)
        shown = ric_traffic(url, "canary", "2=100")
        assert shown.returncode == 0 and "version 2: 100.0%" in shown.stdout, shown.stdout + shown.stderr
        during = load.result()
    assert set(during) <= {"1", "2"}
    assert set(answered_versions(url, "canary", 100)) == {"2"}
    # an explicit version is still served
    reply = requests.post(f"{url}/v2/models/canary/versions/1/infer", json=BODY, timeout=30)
    assert reply.json()["model_version"] == "1"


def test_a_sticky_split_keeps_each_user_on_one_version(server):
    url = server.http
    shown = ric_traffic(url, "canary", "1=50", "2=50", "--sticky-by", "user")
    assert shown.returncode == 0, shown.stdout
    chosen = {user: answered_versions(url, "canary", 3, {"user": user}) for user in (f"u{i}" for i in range(40))}
    assert all(len(set(versions)) == 1 for versions in chosen.values())
    assert {versions[0] for versions in chosen.values()} == {"1", "2"}


def test_a_split_sticky_by_a_forwarded_header_keeps_each_user_on_one_version_over_http_and_grpc(server):
    import tritonclient.grpc as grpcclient

    session, client = requests.Session(), grpcclient.InferenceServerClient(server.grpc)
    x = grpcclient.InferInput("INPUT0", [1, 64], "FP32")
    x.set_data_from_numpy(X)
    chosen = {}
    for user in (f"u{i}" for i in range(30)):
        over_http = {session.post(f"{server.http}/v2/models/by_header/infer", json=BODY, headers={"X-User": user},
                                  timeout=30).json()["model_version"] for _ in range(3)}
        over_grpc = {client.infer("by_header", [x], headers={"x-user": user}).get_response().model_version
                     for _ in range(3)}
        assert len(over_http) == 1 and over_http == over_grpc, (user, over_http, over_grpc)
        chosen[user] = over_http.pop()
    assert set(chosen.values()) == {"1", "2"}


def test_bad_splits_are_refused_by_name_and_change_nothing(server):
    url = f"{server.http}/v2/repository/models/canary/traffic"
    before = requests.get(url, timeout=30).json()
    for change, words in (({"weights": {"3": 1}}, "version 3 is not served"),
                          ({"weights": {"1": -1}}, "weights must be >= 0"),
                          ({"weight": {"1": 1}}, "weight")):
        reply = requests.post(url, json=change, timeout=30)
        assert reply.status_code == 400 and words in reply.json()["error"], reply.text
    assert requests.get(url, timeout=30).json() == before
    reply = requests.get(f"{server.http}/v2/repository/models/nothing/traffic", timeout=30)
    assert reply.status_code == 404 and "nothing" in reply.json()["error"]


def test_shadow_copies_are_compared_and_counted_and_never_answer_the_client(server):
    url = server.http
    assert set(answered_versions(url, "agreeing", 40)) == {"1"}
    assert set(answered_versions(url, "differing", 40)) == {"1"}

    def shadow_of(model: str) -> dict:
        metrics = requests.get(f"{url}/metrics", timeout=30).text
        counts = {}
        for line in metrics.splitlines():
            if line.startswith("ric_shadow_requests{") and f'model="{model}"' in line:
                outcome = line.split('outcome="')[1].split('"')[0]
                counts[outcome] = counts.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
        return counts

    wait_for(lambda: shadow_of("agreeing").get("agreed") == 40, timeout_s=30,
             what=lambda: f"40 agreeing copies: {shadow_of('agreeing')}, version 2: {stats(url, 'agreeing')['2']}")
    assert shadow_of("agreeing") == {"agreed": 40, "differed": 0, "failed": 0, "dropped": 0}
    wait_for(lambda: shadow_of("differing").get("differed") == 40, timeout_s=30,
             what=lambda: f"40 differing copies: {shadow_of('differing')}")
    # the candidate counted each copy as a request of its own
    assert stats(url, "other")["1"]["inference_stats"]["success"]["count"] == 40
    assert stats(url, "agreeing")["2"]["inference_stats"]["success"]["count"] == 40


def test_a_slow_shadow_drops_copies_it_cannot_hold_and_the_model_answers_every_request(server):
    url = server.http
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(lambda _: answered_versions(url, "hurried", 5), range(8)))
    assert sum(len(a) for a in answered) == 40

    def counts() -> dict:
        text = requests.get(f"{url}/metrics", timeout=30).text
        return {line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line.startswith("ric_shadow_requests{") and 'model="hurried"' in line}

    wait_for(lambda: sum(counts().values()) == 40, timeout_s=60, what=lambda: f"every copy counted: {counts()}")
    assert counts()["dropped"] > 0 and counts()["agreed"] == 0
    assert counts()["differed"] + counts()["dropped"] == 40


def payload_counts(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("ric_payload_records{") and 'model="logged"' in line}


def logged_lines() -> pandas.DataFrame:
    """Every payload line in S3, read back as their users would."""
    client = boto3.client("s3")
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=PAYLOADS, Prefix="run/logged/")
            for o in page.get("Contents", [])]
    frames = [pandas.read_json(client.get_object(Bucket=PAYLOADS, Key=key)["Body"], lines=True) for key in keys]
    return pandas.concat(frames, ignore_index=True) if frames else pandas.DataFrame({"id": []})


def send_logged(url: str, ids: range) -> None:
    session = requests.Session()
    for i in ids:
        reply = session.post(f"{url}/v2/models/logged/infer", json={**BODY, "id": f"r{i}"}, timeout=30)
        assert reply.status_code == 200, reply.text


def test_payloads_reach_s3_and_a_sink_killed_mid_run_loses_nothing_it_accepted(server):
    url = server.http
    send_logged(url, range(30))
    wait_for(lambda: payload_counts(url).get("written") == 30, timeout_s=60,
             what=lambda: f"30 records written: {payload_counts(url)}")
    before = logged_lines()
    assert sorted(before["id"]) == sorted(f"r{i}" for i in range(30))
    line = before.iloc[0]
    assert line["model"] == "logged" and line["version"] == 1 and line["status"] == "OK" and line["latency_ms"] > 0
    assert line["inputs"]["INPUT0"]["shape"] == [1, 64] and len(line["inputs"]["INPUT0"]["data"]) == 64
    assert line["outputs"]["OUTPUT0"] == {"datatype": "FP32", "shape": [1, 10], "redacted": True}

    stop_moto(server.moto)  # the sink dies: inference goes on
    send_logged(url, range(30, 330))  # more than the 100 records its payload log may hold
    during = payload_counts(url)
    assert during["written"] == 30 and during["dropped"] >= 200 and during["logged"] + during["dropped"] == 330
    server.moto = start_moto(server.moto_port)  # back, empty (moto keeps its objects in memory)
    boto3.client("s3").create_bucket(Bucket=PAYLOADS)
    wait_for(lambda: payload_counts(url).get("written") == payload_counts(url).get("logged"), timeout_s=90,
             what=lambda: f"what was accepted written: {payload_counts(url)}")
    after = set(logged_lines()["id"])
    counts = payload_counts(url)
    # every request is accounted for: written (before the outage, or after it) or counted as dropped
    assert after <= {f"r{i}" for i in range(30, 330)}
    assert len(after) + counts["dropped"] == 300 and counts["logged"] == 30 + len(after)


def test_a_shifted_input_distribution_passes_the_drift_threshold_and_the_reference_one_stays_under(server):
    from cluster.cli.status import collect
    from cluster.names import APP_NAME

    url, rng = server.http, np.random.default_rng(2)
    session = requests.Session()
    for model, mean in (("steady", 0.0), ("drifting", 1.0)):
        for _ in range(60):
            x = rng.normal(mean, 1, 64)
            body = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": x.tolist()}]}
            assert session.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30).status_code == 200

    def psi(model: str) -> float | None:
        text = requests.get(f"{url}/metrics", timeout=30).text
        found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ric_drift_score{")
                 and f'model="{model}"' in line and 'feature="value"' in line and 'method="psi"' in line]
        return found[0] if found else None

    wait_for(lambda: psi("drifting") is not None and psi("steady") is not None, timeout_s=30,
             what="drift scores of both models")
    assert psi("steady") < 0.1 and psi("drifting") > 0.25, (psi("steady"), psi("drifting"))
    status = collect(APP_NAME, 0.5)["models"]
    assert status["drifting"]["versions"]["1"]["drift"]["INPUT0/value"]["values"] == 60 * 64
    assert status["drifting"]["versions"]["1"]["drift"]["INPUT0/value"]["psi"] > 0.25


def test_a_reference_taken_from_the_first_requests_then_scores_the_next(server):
    url, rng = server.http, np.random.default_rng(3)
    session = requests.Session()

    def send(mean: float, n: int) -> None:
        for _ in range(n):
            body = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32",
                                "data": rng.normal(mean, 1, 64).tolist()}]}
            assert session.post(f"{url}/v2/models/learned/infer", json=body, timeout=30).status_code == 200

    def psi() -> float | None:
        text = requests.get(f"{url}/metrics", timeout=30).text
        found = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("ric_drift_score{")
                 and 'model="learned"' in line and 'tensor="INPUT0"' in line and 'method="psi"' in line]
        return found[0] if found else None

    send(0.0, 40)  # the reference
    wait_for(lambda: requests.get(f"{url}/metrics", timeout=30) and psi() is None, timeout_s=5, what="no score yet")
    time.sleep(1.5)  # the next reports carry the reference back to the copies
    send(2.0, 40)
    wait_for(lambda: (psi() or 0) > 0.25, timeout_s=30, what=lambda: f"a drift score past 0.25: {psi()}")


def test_a_split_set_live_outlives_a_restart_of_the_sync(server):
    """The last test of the module: it restarts the sync."""
    import ray

    from cluster.names import SYNC_NAME

    url = server.http
    assert ric_traffic(url, "canary", "1=100").returncode == 0

    def sync_actors() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{SYNC_NAME}#" in a["name"]}

    (killed,) = sync_actors()
    ray.kill(ray.get_actor(killed, namespace="serve"), no_restart=True)
    wait_for(lambda: sync_actors() - {killed}, timeout_s=90, what="Serve to start a new sync replica")
    wait_for(lambda: requests.get(f"{url}/v2/repository/models/canary/traffic", timeout=30).status_code == 200,
             timeout_s=60, what="the new sync to answer")
    assert requests.get(f"{url}/v2/repository/models/canary/traffic", timeout=30).json()["traffic"]["weights"] == {
        "1": 100.0}
    time.sleep(6)  # past a watch timeout: replicas that followed a sync that forgot the split would serve 2 too
    assert set(answered_versions(url, "canary", 100)) == {"1"}
    shown = ric_traffic(url, "canary", "--reset")
    assert shown.returncode == 0 and "version 1: 80.0%, version 2: 20.0%" in shown.stdout, shown.stdout
