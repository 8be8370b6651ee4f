"""Live version updates: a new version landing in the store reaches every replica while clients keep
calling, with no failed request; a broken version is reported and the served one keeps answering; a
changed config is pushed the same way; a request whose caller gave up does not keep its version loaded."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from cluster.repository.examples import onnx_mlp
from tests.conftest import write_model
from tests.integration.conftest import wait_for
from tests.integration.live.conftest import BODY, expected, land_version, rows_answer, serves_max_batch_size


def test_new_version_reaches_every_replica_under_load_without_a_failed_request(live):
    root, server = live
    answers: list[tuple[int, str, list]] = []
    stop = threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            response = session.post(f"{server}/v2/models/live/infer", json=BODY, timeout=60)
            body = response.json()
            answers.append((response.status_code, body.get("model_version"), body.get("outputs") or body))

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(1.0)
        land_version(root, 2, {"model.onnx": onnx_mlp(seed=2)})
        # every replica serves version 2 once 40 answers in a row came from it
        wait_for(lambda: len(answers) > 40 and all(a[1] == "2" for a in answers[-40:]), timeout_s=90,
                 what=lambda: f"version 2 everywhere; last answers {[a[1] for a in answers[-10:]]}")
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    failures = [a for a in answers if a[0] != 200]
    assert not failures, failures[:3]
    versions = [a[1] for a in answers]
    assert versions[0] == "1" and versions[-1] == "2"
    one, two = expected(1), expected(2)
    for _, version, outputs in answers:
        got = np.array(outputs[0]["data"], np.float32).reshape(1, 10)
        np.testing.assert_allclose(got, one if version == "1" else two, rtol=1e-4, atol=1e-5)
    index = requests.post(f"{server}/v2/repository/index", timeout=30).json()
    assert [(r["version"], r["state"]) for r in index] == [("2", "READY")]


def test_a_broken_version_is_reported_and_the_served_one_answers_on(live):
    root, server = live
    land_version(root, 3, {"model.onnx": b"not a model"})

    def reported() -> bool:
        rows = {r["version"]: r for r in requests.post(f"{server}/v2/repository/index", timeout=30).json()}
        return rows.get("3", {}).get("state") == "UNAVAILABLE" and "failed to load" in rows["3"]["reason"]

    wait_for(reported, timeout_s=60, what="version 3 to be reported")
    for _ in range(10):
        response = requests.post(f"{server}/v2/models/live/infer", json=BODY, timeout=30)
        assert response.status_code == 200 and response.json()["model_version"] == "2"
    # fixing it in the store (a new fingerprint) makes the replicas try again
    (root / "live" / "3" / "model.onnx").write_bytes(onnx_mlp(seed=3))
    wait_for(lambda: requests.post(f"{server}/v2/models/live/infer", json=BODY, timeout=30).json()
             .get("model_version") == "3", timeout_s=60, what="version 3 after its fix")


def test_a_config_change_in_the_store_is_pushed_live(live):
    root, server = live
    config_file = root / "live" / "config.pbtxt"
    original = config_file.read_text()
    config_file.write_text(original.replace("max_batch_size: 8", "max_batch_size: 2"))
    try:
        wait_for(lambda: serves_max_batch_size(server, 2), timeout_s=90, what="max_batch_size 2 on every replica")
        assert rows_answer(server, 2) == 200
    finally:
        config_file.write_text(original)
    wait_for(lambda: serves_max_batch_size(server, 8), timeout_s=90, what="max_batch_size 8 again")


SLOW_MODEL = """
import os
import time

VERSION = None


def initialize(args):
    global VERSION
    VERSION = args["model_version"]


def infer(inputs):
    time.sleep(0.8)
    return {"Y": inputs["X"]}


def finalize():  # the version was unloaded: leave a mark for the test
    open(os.path.join(MARKS, "unloaded-" + VERSION), "w").close()
"""


def test_a_request_abandoned_while_queued_does_not_keep_its_version_loaded(live, tmp_path):
    """A caller that gives up on a request queued behind another must not leave the request's version counted
    as in use: after an update the retired version is unloaded (its memory, and GPU memory, freed)."""
    root, server = live
    code = f"MARKS = {str(tmp_path)!r}\n" + SLOW_MODEL
    write_model(root, "slow", 'backend: "python"\ninput [ { name: "X", data_type: TYPE_FP32, dims: [ 1 ] } ]\n'
                'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 1 ] } ]\n', {"1/model.py": code})
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    url = f"{server}/v2/models/slow/infer"
    assert requests.post(f"{server}/v2/repository/models/slow/load", json={}, timeout=180).status_code == 200
    try:
        first = threading.Thread(target=requests.post, args=(url,), kwargs={"json": body, "timeout": 60})
        first.start()
        time.sleep(0.2)  # the first request runs; the next ones queue behind it, and their callers give up
        for _ in range(3):
            with pytest.raises(requests.Timeout):
                requests.post(url, json=body, timeout=0.3)
        first.join(timeout=60)
        land_version(root, 2, {"model.py": code.encode()}, model="slow")
        wait_for(lambda: requests.post(url, json=body, timeout=30).json().get("model_version") == "2",
                 timeout_s=60, what="version 2 of slow")
        wait_for(lambda: (tmp_path / "unloaded-1").exists(), timeout_s=30, what="version 1 of slow to be unloaded")
    finally:
        requests.post(f"{server}/v2/repository/models/slow/unload", json={}, timeout=180)
