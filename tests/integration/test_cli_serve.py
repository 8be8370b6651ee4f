"""``ric serve`` as a user runs it: the ric script in a clean environment (no RAY_* variables; a HOME of its
own), its output and files, ``ric status``, the client's async calls and errors, restricted APIs and limits,
a real Prometheus, then a stop by a signal to the whole process group (as docker stop and systemd send it)
that leaves no process and no port behind, so that a second ``ric serve`` starts on the same ports. A
repository that cannot fit fails at once, naming what does not fit. The README's snippets:
test_cli_readme.py."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cluster.names import APP_NAME, model_app_name
from cluster.repository.examples import onnx_add_sub
from tests.conftest import dashboard_queries, write_model
from tests.integration.conftest import BIN, clean_env, free_port, ric_serving, start_ric, wait_for

#: The header the module's ric serve requires for the repository API (model loads run code).
ADMIN = ("admin-key", "s3cret")
MAX_REQUEST_BYTES = 4 << 20


@pytest.fixture(scope="module")
def ric(home, dashboard_port):
    with ric_serving(home, "--dashboard-port", str(dashboard_port), "--model-control-mode", "explicit",
                     "--restricted-api", f"model-repository:{ADMIN[0]}={ADMIN[1]}",
                     "--max-request-bytes", str(MAX_REQUEST_BYTES)) as server:
        yield server


def test_ric_serve_shows_progress_and_serves_http_and_grpc(ric):
    assert re.search(r"ric: \d+/\d+ deployments ready", ric.output)
    assert ("ric: 8 models ready: detect_classify, detector, identity, linear_torch, mlp, simple, text_generator, "
            "text_stats" in ric.output)
    assert f"ric: serving example at {ric.url}/v2 and gRPC 127.0.0.1:{ric.grpc_port}" in ric.output
    assert "ingress: direct" in ric.output
    assert requests.get(f"{ric.url}/v2/health/ready", timeout=30).ok
    body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": ["ray"]}]}
    response = requests.post(f"{ric.url}/v2/models/text_stats/infer", json=body, timeout=30)
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == ["RAY"]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ric.grpc_port}")
    x = grpcclient.InferInput("INPUT__0", [1, 4], "FP32")
    x.set_data_from_numpy(np.ones((1, 4), np.float32))
    assert client.infer("linear_torch", [x]).as_numpy("OUTPUT__0").shape == (1, 2)


def test_client_async_calls_and_errors(ric, home):
    """A Ray job's client takes the node's ingress listener (pooled connections), answers as the handles do,
    and falls back to the handle for a request larger than the listener takes."""
    code = """
import asyncio
import numpy as np
from cluster.client import connect
from deployments.errors import InferenceError

client = connect()
print("MODELS", sorted(client.models()))
simple = client.model("simple")
x = np.ones((1, 16), np.int32)
print("ASYNC", asyncio.run(simple.infer_async({"INPUT0": x, "INPUT1": x}))["OUTPUT0"].tolist())
answer = simple.infer({"INPUT0": x, "INPUT1": x}, outputs=["OUTPUT1"], version=1)
print("SYNC", sorted(answer), answer["OUTPUT1"].tolist(), answer["OUTPUT1"].flags.writeable)
print("POOLED", len(simple.route.pools[client._loop].idle))
text = client.model("text_stats").infer({"TEXT": np.array([["ray"]], dtype=object)})
print("BYTES", {name: array.tolist() for name, array in text.items()})
try:
    simple.infer({"INPUT0": x.astype(np.float64), "INPUT1": x})
except InferenceError as exc:
    print("ERROR", exc.code.value, exc)
big = np.arange(5 << 18, dtype=np.float32).reshape(1, -1)  # 5 MB: over the listener's 4 MB
print("BIG", bool((client.model("identity").infer({"INPUT0": big})["OUTPUT0"] == big).all()))
plain = connect(listener=False).model("simple")
print("HANDLE", plain.route, plain.infer({"INPUT0": x, "INPUT1": x})["OUTPUT0"].tolist())
try:
    client.model("nope")
except KeyError as exc:
    print("UNKNOWN", exc)
"""
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(home), capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("MODELS ['detect_classify', 'detector', 'identity', 'linear_torch', 'mlp', 'simple', 'text_generator', "
            "'text_stats']" in done.stdout)
    assert "ASYNC [[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]]" in done.stdout
    assert "SYNC ['OUTPUT1'] [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]] True" in done.stdout
    assert "POOLED 1" in done.stdout  # the sync call's connection, kept for the next
    assert "BYTES" in done.stdout and "b'RAY'" in done.stdout
    assert "ERROR INVALID_ARGUMENT" in done.stdout and "FP64" in done.stdout
    assert "BIG True" in done.stdout
    assert "HANDLE None [[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]]" in done.stdout
    assert "serves no model 'nope'" in done.stdout


def test_ric_status_shows_replicas_and_the_load_it_measures(ric, home):
    stop = threading.Event()

    def load():
        with requests.Session() as session:
            body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                               for n in ("INPUT0", "INPUT1")]}
            while not stop.is_set():
                session.post(f"{ric.url}/v2/models/simple/infer", json=body, timeout=30)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    try:
        done = subprocess.run([str(BIN / "ric"), "status", "--json", "--window", "2"], env=clean_env(home),
                              capture_output=True, text=True, timeout=120)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(done.stdout)
    simple = status["models"]["simple"]
    assert simple["status"] == "HEALTHY" and simple["replicas_by_node"] == {"127.0.0.1": 1}
    assert simple["versions"]["1"]["requests_per_s"] > 0 and simple["versions"]["1"]["p99_ms"] > 0
    assert set(status["models"]) == {"detect_classify", "detector", "identity", "linear_torch", "mlp", "simple",
                                     "text_generator", "text_stats"}
    text = subprocess.run([str(BIN / "ric"), "status", "--window", "0.5"], env=clean_env(home),
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "IN FLIGHT" in text.stdout and "text_stats" in text.stdout, text.stderr[-2000:]
    assert text.stdout.startswith("application 'ric'") and not text.stderr, (text.stdout, text.stderr)  # the table only


def test_the_repository_api_answers_only_with_the_restricted_header(ric):
    """Explicit model control lets callers load (and upload) models, so the repository API is restricted to
    callers with the operator's header, as Triton's restricted APIs; the other APIs stay open."""
    for headers in ({}, {ADMIN[0]: "guess"}):
        response = requests.post(f"{ric.url}/v2/repository/models/simple/unload", headers=headers, timeout=30)
        assert response.status_code == 403, response.text
        assert response.json() == {"error": "This API is restricted, expecting header 'admin-key'"}
    index = requests.post(f"{ric.url}/v2/repository/index", headers=dict([ADMIN]), timeout=30)
    assert index.status_code == 200 and any(row["name"] == "simple" for row in index.json())
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ric.grpc_port}")
    with pytest.raises(InferenceServerException, match="This protocol is restricted, expecting header "
                                                       "'triton-grpc-protocol-admin-key'") as info:
        client.unload_model("simple")
    assert info.value.status() == "StatusCode.UNAVAILABLE"
    assert client.get_model_repository_index(headers={f"triton-grpc-protocol-{ADMIN[0]}": ADMIN[1]}).models
    assert client.is_model_ready("simple") and client.get_model_metadata("simple").name == "simple"


def test_requests_over_the_limit_are_refused_before_they_are_read(ric):
    big = np.zeros((1, MAX_REQUEST_BYTES // 4 + 16), np.int32)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ric.grpc_port}")
    inputs = [grpcclient.InferInput(name, list(big.shape), "INT32") for name in ("INPUT0", "INPUT1")]
    for infer_input in inputs:
        infer_input.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as info:
        client.infer("simple", inputs)
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED", info.value
    assert "Received message larger than max" in info.value.message()  # Serve's gRPC proxy did not read it
    response = requests.post(f"{ric.url}/v2/models/simple/infer", data=bytes(MAX_REQUEST_BYTES + 1), timeout=30)
    assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]
    assert client.is_model_ready("simple")


PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: ric
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.fixture
def prometheus(ric, tmp_path):
    """A real Prometheus scraping ``ric serve``'s metrics port every second; yields its query function."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: `make install` installs Debian's prometheus package when it runs as "
                    "root or with sudo")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(port=ric.metrics_port))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT)

    def query(expression: str, at: float | None = None) -> float | None:
        params = {"query": expression, **({"time": f"{at:.3f}"} if at is not None else {})}
        answer = requests.get(f"http://127.0.0.1:{port}/api/v1/query", params=params, timeout=30).json()
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    try:
        wait_for(lambda: process.poll() is not None or _answers(port), timeout_s=60, what="Prometheus to start")
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        yield query
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=5).ok
    except requests.ConnectionError:
        return False


def test_prometheus_scrapes_metrics_that_match_the_load_and_the_statistics(ric, prometheus):
    metrics = requests.get(f"http://127.0.0.1:{ric.metrics_port}/metrics", timeout=30)
    assert metrics.ok and "# TYPE nv_inference_count counter" in metrics.text
    assert requests.get(f"http://127.0.0.1:{ric.metrics_port}/other", timeout=30).status_code == 404
    labels = '{model="simple",version="1"}'

    def statistics() -> dict:
        (row,) = requests.get(f"{ric.url}/v2/models/simple/versions/1/stats", timeout=30).json()["model_stats"]
        return row

    def scraped(count: int) -> bool:  # Prometheus holds a scrape taken after the count was reached
        return prometheus(f"nv_inference_count{labels}") == count

    before = statistics()["inference_count"]
    wait_for(lambda: scraped(before), timeout_s=60, what="Prometheus to scrape the count before the load")
    # five scrapes or more before the load, so that rate() below has samples across its whole window
    wait_for(lambda: (prometheus(f"count_over_time(nv_inference_count{labels}[1m])") or 0) >= 5, timeout_s=60,
             what="Prometheus to hold five scrapes")
    started, sent = time.time(), 200
    body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                       for n in ("INPUT0", "INPUT1")]}
    with requests.Session() as session:
        for _ in range(sent):
            assert session.post(f"{ric.url}/v2/models/simple/infer", json=body, timeout=30).status_code == 200
    stats = statistics()
    assert stats["inference_count"] == before + sent
    wait_for(lambda: scraped(before + sent), timeout_s=60, what="Prometheus to scrape the count after the load")
    now = time.time()
    window = 20  # reaches back before the load
    # (the scrape that held the count before the load was taken before it started)
    assert prometheus(f"nv_inference_count{labels}", at=now) - prometheus(f"nv_inference_count{labels}",
                                                                          at=started) == sent
    # rate() and increase() extrapolate to the window's edges from the scrapes inside it (one a second)
    rate = prometheus(f"rate(nv_inference_count{labels}[{window}s])", at=now)
    assert 0.8 * sent <= rate * window <= 1.25 * sent, (rate, window)
    inference = stats["inference_stats"]
    for stage in ("queue", "compute_infer"):
        assert prometheus(f"nv_inference_{stage}_duration_us{labels}") == pytest.approx(inference[stage]["ns"] / 1000)
    assert prometheus(f'nv_inference_request_success{labels}') == inference["success"]["count"]
    p99 = prometheus(f"histogram_quantile(0.99, rate(nv_inference_first_response_histogram_ms_bucket{labels}"
                     f"[{window}s]))", at=now)
    assert p99 is not None and p99 > 0
    for query in dashboard_queries():  # the Grafana dashboard's queries are PromQL that Prometheus runs
        variable = re.fullmatch(r"label_values\((\w+), (\w+)\)", query)  # Grafana's, for its variables
        if variable:
            query = f"group by ({variable[2]}) ({variable[1]})"
        prometheus(query.replace("$__rate_interval", "1m").replace("$model", ".*"))


def test_ric_status_says_what_is_pending_and_why(ric, home):
    """A model uploaded and loaded later that asks for a GPU this Ray lacks waits for resources: ric status
    lists it as pending with Serve's reason (the load answers once the sync gives up, after its deploy
    timeout; the next test stops this server)."""
    upload = {"parameters": {
        "config": json.dumps({"backend": "onnxruntime", "instance_group": [{"kind": "KIND_GPU"}]}),
        "file:1/model.onnx": base64.b64encode(onnx_add_sub()).decode()}}

    def load() -> None:
        try:
            requests.post(f"{ric.url}/v2/repository/models/gpu_hungry/load", json=upload, timeout=300,
                          headers=dict([ADMIN]))
        except requests.RequestException:  # the next test stops the server under it
            pass

    threading.Thread(target=load, daemon=True).start()

    def pending() -> list[dict]:
        done = subprocess.run([str(BIN / "ric"), "status", "--json", "--window", "0.5"], env=clean_env(home),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return [p for p in json.loads(done.stdout)["pending"] if p["deployment"] == "gpu_hungry"]

    wait_for(lambda: pending(), timeout_s=150, what="ric status to list gpu_hungry as pending")
    (entry,) = pending()
    assert entry["application"] == model_app_name(APP_NAME, "gpu_hungry")
    assert "to be scheduled" in entry["reason"] and "GPU" in entry["reason"], entry
    text = subprocess.run([str(BIN / "ric"), "status", "--window", "0.5"], env=clean_env(home),
                          capture_output=True, text=True, timeout=120).stdout
    assert "pending:\n" in text and "gpu_hungry (" in text, text


def test_a_group_signal_stops_everything_and_a_second_serve_starts(ric, home, dashboard_port):
    below = psutil.Process(ric.process.pid).children(recursive=True)
    seconds = ric.stop_group()
    print(f"ric serve stopped in {seconds} s by its own clock")
    assert ric.process.returncode == 0, ric.output[-3000:]
    stopping = ric.output[ric.output.index("ric: shutting down"):]
    assert all(line.startswith("ric: ") for line in stopping.splitlines()), stopping  # Ray's complaints: the log
    assert not [p for p in below if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not (home / ".ric" / "serve.json").exists()
    again = start_ric(home, "--dashboard-port", str(dashboard_port), http_port=ric.http_port,
                      grpc_port=ric.grpc_port)
    try:
        again.wait_serving()
        assert requests.get(f"{again.url}/v2/health/ready", timeout=30).ok
    finally:
        again.stop_group()
    assert again.process.returncode == 0, again.output[-3000:]


def test_a_repository_that_cannot_fit_fails_at_once_naming_it(home, tmp_path):
    repository = tmp_path / "repository"
    write_model(repository, "plain", "", {"1/model.onnx": onnx_add_sub()})
    write_model(repository, "big_gpu", 'instance_group [ { count: 2, kind: KIND_GPU } ]\n'
                'parameters { key: "gpu_fraction" value { string_value: "0.5" } }\n', {"1/model.onnx": onnx_add_sub()})
    done = subprocess.run([str(BIN / "ric"), "serve", str(repository), "--no-dashboard", "--http-port",
                           str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", "0"],
                          env=clean_env(home), capture_output=True, text=True, timeout=180)
    assert done.returncode == 1, done.stdout[-3000:]
    assert "do not fit this Ray cluster" in done.stderr
    assert "'big_gpu': 2 of 2 replicas cannot be placed (each asks CPU 0.25, GPU 0.5)" in done.stderr
    assert "--num-gpus" in done.stderr and "gpu_fraction" in done.stderr
    assert "'plain'" not in done.stderr
