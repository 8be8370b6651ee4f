"""S3 model stores against a real S3-compatible server over HTTP (moto's standalone server, started
here on 127.0.0.1), with boto3 talking to it: listing, verified cached downloads, serving and live updates,
and serving on while S3 stalls."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import boto3
import numpy as np
import pytest
import requests

from cluster.repository.examples import onnx_mlp
from cluster.repository.s3_store import S3Store
from tests.integration.conftest import moto_s3, serve_repository, wait_for

BUCKET = "models"
CONFIG = 'platform: "onnxruntime_onnx" max_batch_size: 8 dynamic_batching { }'
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


@dataclass
class S3:
    client: object  # boto3's S3 client
    server: subprocess.Popen


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server process; AWS settings in the environment, so Ray's workers inherit them."""
    with moto_s3(cache_dir=str(tmp_path_factory.mktemp("cache"))) as (server, _):
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="repo/mlp/config.pbtxt", Body=CONFIG.encode())
        client.put_object(Bucket=BUCKET, Key="repo/mlp/1/model.onnx", Body=onnx_mlp(seed=1))
        client.put_object(Bucket=BUCKET, Key="repo/bare/1/model.onnx", Body=onnx_mlp(seed=4))
        yield S3(client, server)


def test_store_lists_models_versions_and_configs(s3):
    store = S3Store(f"s3://{BUCKET}/repo")
    assert store.models() == ["bare", "mlp"]
    assert store.versions("mlp") == [1]
    assert store.config("mlp").max_batch_size == 8
    assert store.config("bare").name == "bare"  # no config: auto-completed from the model later
    with pytest.raises(Exception, match="invalid model name"):
        store.versions("../etc")


def test_fetch_downloads_once_and_verifies(s3):
    store = S3Store(f"s3://{BUCKET}/repo")
    path = store.fetch("mlp", 1)
    model_file = path / "model.onnx"
    assert model_file.read_bytes() == onnx_mlp(seed=1)
    first = model_file.stat().st_mtime_ns
    time.sleep(0.01)
    assert store.fetch("mlp", 1) == path and model_file.stat().st_mtime_ns == first  # cached, not downloaded
    before = store.fingerprint("mlp", 1)
    s3.client.put_object(Bucket=BUCKET, Key="repo/mlp/1/model.onnx", Body=onnx_mlp(seed=1) + b"")
    assert store.fingerprint("mlp", 1) == before  # same bytes, same ETag
    assert not [p for p in path.iterdir() if p.name.startswith(".model.onnx.") and not p.name.endswith(".etag")]
    with pytest.raises(FileNotFoundError, match="has no version 7"):
        store.fetch("mlp", 7)
    s3.client.put_object(Bucket=BUCKET, Key="repo/mlp/labels.txt", Body=b"cat\ndog\n")  # the model's own files
    assert (store.fetch("mlp", 1).parent / "labels.txt").read_text() == "cat\ndog\n"  # beside the version
    assert not (path.parent / "config.pbtxt").exists()


def test_serving_from_s3_and_a_version_update_pushed_live(s3):
    with serve_repository(f"s3://{BUCKET}/repo", poll_interval_s=0.5, model_control_mode="explicit") as endpoints:
        server = endpoints.http
        first = requests.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=30)
        assert first.status_code == 200 and first.json()["model_version"] == "1"
        assert requests.post(f"{server}/v2/models/bare/infer", json=BODY, timeout=30).status_code == 200
        s3.client.put_object(Bucket=BUCKET, Key="repo/mlp/2/model.onnx", Body=onnx_mlp(seed=2))
        wait_for(lambda: requests.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=30).json()
                 .get("model_version") == "2", timeout_s=60, what="version 2 from S3")
        second = requests.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=30).json()
        assert not np.allclose(first.json()["outputs"][0]["data"], second["outputs"][0]["data"])
        stalled_store_fails_control_calls_fast_and_serving_goes_on(s3, server)


def stalled_store_fails_control_calls_fast_and_serving_goes_on(s3: S3, server: str) -> None:
    """S3 stops answering (its server paused: connections open, nothing comes back): requests are served
    from the cache meanwhile, a repository load fails within the store client's timeouts with a clear
    503, and once S3 answers again the load succeeds."""
    answers: list[int] = []
    stop = threading.Event()

    def call() -> None:
        while not stop.is_set():
            answers.append(requests.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=30).status_code)

    os.kill(s3.server.pid, signal.SIGSTOP)
    caller = threading.Thread(target=call)
    caller.start()
    try:
        started = time.monotonic()
        response = requests.post(f"{server}/v2/repository/models/mlp/load", json={}, timeout=180)
        took = time.monotonic() - started
    finally:
        os.kill(s3.server.pid, signal.SIGCONT)
        stop.set()
        caller.join(timeout=60)
    assert response.status_code == 503 and "cannot be read" in response.json()["error"], response.text
    assert took < 90, took
    assert answers and set(answers) == {200}, answers
    assert requests.post(f"{server}/v2/repository/models/mlp/load", json={}, timeout=180).status_code == 200
    print(f"S3 paused: the load failed after {took:.1f} s; {len(answers)} requests answered meanwhile")
