"""``ric serve --ingress haproxy``: Serve's HAProxy in front of the ingress replicas, as a user runs it. HTTP
and gRPC are answered through it; its config, admin socket and state sit in a folder only this user may
enter; it runs on ric's copy of Serve's config (ric's JSON 503 for its own errors, a total header time, a
Content-Length rule); and a stop by a group signal removes that folder. The default ingress (the replicas'
own listeners): test_cli_serve_ingress.py."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient

from cluster.cli.haproxy import CONFIG_COPY_PREFIX, UNAVAILABLE_PAGE
from tests.integration.conftest import assert_huge_lengths_refused, ric_serving

HEADER_TIMEOUT_S = 4


@pytest.fixture(scope="module")
def ric(home):
    with ric_serving(home, "--ingress", "haproxy", "--models", "simple", "--no-dashboard",
                     "--header-timeout-s", str(HEADER_TIMEOUT_S)) as server:
        yield server


def haproxy_config(ric) -> Path:
    """The config the server's HAProxy runs on (during one of Serve's reloads, the old and the new process
    run on the same file)."""
    configs = {Path(p.cmdline()[p.cmdline().index("-f") + 1])
               for p in psutil.Process(ric.process.pid).children(recursive=True) if p.name() == "haproxy"}
    assert len(configs) == 1, configs
    return configs.pop()


def test_http_and_grpc_go_through_haproxy_whose_files_are_private_and_whose_config_is_rics(ric):
    assert "ingress: haproxy" in ric.output
    x = np.arange(16, dtype=np.int32).reshape(1, 16)
    body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": x.ravel().tolist()}
                       for n in ("INPUT0", "INPUT1")]}
    answer = requests.post(f"{ric.url}/v2/models/simple/infer", json=body, timeout=30)
    assert answer.status_code == 200 and answer.json()["outputs"][0]["data"] == (2 * x).ravel().tolist()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ric.grpc_port}")
    assert client.is_model_ready("simple")
    # HAProxy's config and its admin socket (world-writable, as Serve makes it) sit in a folder only this
    # user may enter, not in Serve's shared /tmp/haproxy-serve
    config = haproxy_config(ric)
    private = next((folder for folder in config.parents if folder.name.startswith("ric-haproxy-")), None)
    assert private is not None and private.stat().st_mode & 0o777 == 0o700, config
    assert list(private.glob("**/admin.sock")), sorted(private.rglob("*"))
    # ric's copy of Serve's config: its page for its own errors (no ingress replica could take a request)
    # is ric's JSON 503, not Serve's plain-text 500, and a request's headers have a total time
    assert config.name == CONFIG_COPY_PREFIX + "haproxy.cfg", config
    pages = set(re.findall(r"(?m)^\s*errorfile 50[234] (\S+)$", config.read_text()))
    assert len(pages) == 1 and Path(pages.pop()).read_bytes() == UNAVAILABLE_PAGE, config.read_text()
    assert f"timeout http-request {HEADER_TIMEOUT_S}s" in config.read_text()


def test_a_content_length_haproxy_cannot_hold_is_refused_there(ric):
    """Past 2^64 HAProxy wraps a Content-Length that the replica's HTTP server reads whole: one request read
    two ways. ric's copy of Serve's config answers 413 for any of 19 digits or more (HAProxy itself refuses
    longer ones with 400), and the server answers on."""
    assert_huge_lengths_refused(ric.http_port, ric.url)


def test_a_group_signal_stops_haproxy_and_removes_its_folder(ric):
    private = next(folder for folder in haproxy_config(ric).parents if folder.name.startswith("ric-haproxy-"))
    below = psutil.Process(ric.process.pid).children(recursive=True)
    ric.stop_group()
    assert ric.process.returncode == 0, ric.output[-3000:]
    assert not private.exists()  # the stop's cleanup ran
    assert not [p for p in below if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
