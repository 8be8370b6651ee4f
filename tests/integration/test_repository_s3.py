"""S3 model stores against a real S3-compatible server over HTTP (moto's standalone server, started
here on 127.0.0.1), with boto3 talking to it: listing, verified cached downloads, serving and live updates."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import boto3
import numpy as np
import pytest
import requests

from cluster.repository.examples import onnx_mlp
from cluster.repository.s3_store import S3Store
from tests.integration.conftest import free_port, serve_repository, wait_for

BUCKET = "models"
CONFIG = 'platform: "onnxruntime_onnx" max_batch_size: 8 dynamic_batching { }'
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server process; AWS settings in the environment, so Ray's workers inherit them."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    settings = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "RIC_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        wait_for(lambda: requests.get(settings["AWS_ENDPOINT_URL"], timeout=2).ok, timeout_s=30, what="moto server")
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="repo/mlp/config.pbtxt", Body=CONFIG.encode())
        client.put_object(Bucket=BUCKET, Key="repo/mlp/1/model.onnx", Body=onnx_mlp(seed=1))
        client.put_object(Bucket=BUCKET, Key="repo/bare/1/model.onnx", Body=onnx_mlp(seed=4))
        yield client
    finally:
        server.terminate()
        server.wait(timeout=30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
    s3.put_object(Bucket=BUCKET, Key="repo/mlp/1/model.onnx", Body=onnx_mlp(seed=1) + b"")
    assert store.fingerprint("mlp", 1) == before  # same bytes, same ETag
    assert not [p for p in path.iterdir() if p.name.startswith(".model.onnx.") and not p.name.endswith(".etag")]
    with pytest.raises(FileNotFoundError, match="has no version 7"):
        store.fetch("mlp", 7)


def test_serving_from_s3_and_a_version_update_pushed_live(s3):
    with serve_repository(f"s3://{BUCKET}/repo", poll_interval_s=0.5) as endpoints:
        server = endpoints.http
        first = requests.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=30)
        assert first.status_code == 200 and first.json()["model_version"] == "1"
        assert requests.post(f"{server}/v2/models/bare/infer", json=BODY, timeout=30).status_code == 200
        s3.put_object(Bucket=BUCKET, Key="repo/mlp/2/model.onnx", Body=onnx_mlp(seed=2))
        wait_for(lambda: requests.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=30).json()
                 .get("model_version") == "2", timeout_s=60, what="version 2 from S3")
        second = requests.post(f"{server}/v2/models/mlp/infer", json=BODY, timeout=30).json()
        assert not np.allclose(first.json()["outputs"][0]["data"], second["outputs"][0]["data"])
