"""The live-update tier: each module serves an ONNX MLP named 'live' with two replicas from a local
repository it may change, on its own Ray + Serve (module-scoped fixtures), with the helpers they share."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from cluster.repository.examples import onnx_mlp
from cluster.repository.local_store import LocalStore
from deployments.serving.runner import ModelRunner
from tests.conftest import write_model
from tests.integration.conftest import serve_repository

CONFIG = ('platform: "onnxruntime_onnx" max_batch_size: 8 dynamic_batching { max_queue_delay_microseconds: 1000 } '
          'instance_group [ { count: 2 } ]')
X = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
#: What models uploaded with loads may hold in all, here: a few small MLPs.
MAX_UPLOADED_BYTES = 1 << 20
BODY = {"inputs": [{"name": "INPUT0", "shape": [1, 64], "datatype": "FP32", "data": X.ravel().tolist()}]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    write_model(root, "live", CONFIG, {"1/model.onnx": onnx_mlp(seed=1)})
    with serve_repository(root, poll_interval_s=0.5, model_control_mode="explicit",
                          max_uploaded_bytes=MAX_UPLOADED_BYTES) as endpoints:
        yield root, endpoints


@pytest.fixture(scope="module")
def live(served):
    root, endpoints = served
    return root, endpoints.http


def land_version(root, version: int, files: dict[str, bytes], model: str = "live") -> None:
    """Write a version folder beside the model, then rename it into place: the store never sees half of it."""
    staging = root / model / f".staging-{version}"
    staging.mkdir()
    for name, data in files.items():
        (staging / name).write_bytes(data)
    os.rename(staging, root / model / str(version))


def expected(seed: int) -> np.ndarray:
    """The output version ``seed`` of the model gives for X, computed in process."""
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp), "m", 'platform: "onnxruntime_onnx"', {"1/model.onnx": onnx_mlp(seed=seed)})
        store = LocalStore(tmp)
        runner = ModelRunner(store.config("m"), store)
        runner.load()
        (out,) = runner.execute([runner.prepare({"INPUT0": X})])
        return out["OUTPUT0"]


def rows_answer(server, rows: int) -> int:
    x = np.zeros((rows, 64), np.float32)
    body = {"inputs": [{"name": "INPUT0", "shape": [rows, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    return requests.post(f"{server}/v2/models/live/infer", json=body, timeout=30).status_code


def serves_max_batch_size(server, size: int) -> bool:
    """Both replicas serve the config: several reads in a row agree, and 4 rows pass only under 8."""
    configs = [requests.get(f"{server}/v2/models/live/config", timeout=30).json() for _ in range(6)]
    return (all(c["max_batch_size"] == size for c in configs)
            and all(rows_answer(server, 4) == (200 if size >= 4 else 400) for _ in range(4)))


def call_until_stopped(url: str, stop: threading.Event, answers: list[int]) -> None:
    session = requests.Session()
    while not stop.is_set():
        answers.append(session.post(url, json=BODY, timeout=60).status_code)


def cpus_free() -> float:
    import ray

    return ray.available_resources().get("CPU", 0.0)
