"""Triton's logging extension over HTTP and gRPC (stock clients): settings read and changed at run time,
bad changes refused by name, and at log_verbose_level 1 every replica logs each request with its id."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import ray
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from deployments.observability.log_settings import DEFAULTS
from tests.integration.conftest import wait_for


@pytest.fixture
def verbose(server):
    """log_verbose_level 1 for the test, then the defaults again."""
    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    yield client.update_log_settings({"log_verbose_level": 1})
    assert client.update_log_settings(DEFAULTS) == DEFAULTS


def logged(text: str) -> bool:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return any(text in path.read_text(errors="replace") for path in logs.rglob("*") if path.is_file()
               and path.suffix in (".log", ".err", ".out"))


def test_settings_change_at_run_time_and_every_replica_logs_requests_with_their_ids(server, endpoints, verbose):
    assert verbose == {**DEFAULTS, "log_verbose_level": 1}
    grpc_settings = grpcclient.InferenceServerClient(endpoints.grpc).get_log_settings(as_json=True)["settings"]
    assert grpc_settings["log_verbose_level"] == {"uint32_param": 1}
    assert grpc_settings["log_info"] == {"bool_param": True}
    assert "logging" in requests.get(f"{server}/v2", timeout=30).json()["extensions"]
    request_id = f"logged-{uuid.uuid4().hex}"
    body = {"id": request_id, "inputs": [{"name": "X", "shape": [1, 1], "datatype": "INT64", "data": [4]}]}
    answer = requests.post(f"{server}/v2/models/flaky/infer", json=body, timeout=30)
    assert answer.status_code == 200 and answer.json()["id"] == request_id
    wait_for(lambda: logged(f"inference request id={request_id} "), timeout_s=60,
             what="the ingress to log the request with its id")


def test_bad_settings_are_refused_and_change_nothing(server, endpoints):
    before = requests.get(f"{server}/v2/logging", timeout=30).json()
    for change, words in (({"log_verbose_level": -2}, "integer >= 0"), ({"log_file": "/tmp/x"}, "log_file"),
                          ({"nope": 1}, "unknown log setting 'nope'")):
        response = requests.post(f"{server}/v2/logging", json=change, timeout=30)
        assert response.status_code == 400 and words in response.json()["error"], response.text
    assert requests.post(f"{server}/v2/logging", data=b"{not json", timeout=30).status_code == 400
    with pytest.raises(InferenceServerException, match="log_format 'ISO8601' is not served") as info:
        grpcclient.InferenceServerClient(endpoints.grpc).update_log_settings({"log_format": "ISO8601"})
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert requests.get(f"{server}/v2/logging", timeout=30).json() == before
