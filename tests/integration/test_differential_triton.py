"""The differential tier: real Triton (2.51, the tritonserver of nvidia-pytriton; benchmarks/install_triton.sh,
which ``make test`` runs) and ``ric serve``'s application load the same repository of Triton-form Python
models (tests/integration/python_models.py) and get the same requests, good and bad, over HTTP and gRPC,
unary and streaming, sequences and BLS: their answers must agree (status, outputs, and the error texts
clients read). Without Triton these tests skip and say why."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from benchmarks.triton_peer import run_triton, triton_binary
from tests.integration.conftest import Endpoints, free_port, serve_repository, wait_for
from tests.integration.python_models import write_repository

pytestmark = pytest.mark.skipif(
    triton_binary() is None,
    reason="real Triton is not installed: run benchmarks/install_triton.sh (make test does; it needs the "
           "system's Python 3.11 and apt's python3-numpy)",
)


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    return write_repository(tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="module")
def servers(repository):
    """Both servers on the same repository: Triton's endpoints, then ours (as ric serve runs it: Python
    models colocated in the ingress's stub processes)."""
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    with run_triton(repository, http_port, grpc_port, metrics_port) as url:
        triton = Endpoints(url, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}/metrics")
        with serve_repository(repository, num_cpus=4, colocate=True, colocate_python=True) as ours:
            yield triton, ours


def add_sub(parameters: dict | None = None, rows: int = 2) -> dict:
    x = np.arange(4 * rows, dtype=np.int32)
    body = {"inputs": [{"name": "INPUT0", "shape": [rows, 4], "datatype": "INT32", "data": x.tolist()},
                       {"name": "INPUT1", "shape": [rows, 4], "datatype": "INT32", "data": [1] * 4 * rows}]}
    return {**body, "parameters": parameters} if parameters else body


def x_of(name: str, value: int) -> dict:
    return {"inputs": [{"name": name, "shape": [1], "datatype": "INT32", "data": [value]}]}


def x(parameters: dict | None = None, **extra) -> dict:
    body = {"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [1]}], **extra}
    return {**body, "parameters": parameters} if parameters else body


def scores() -> dict:
    data = [0.5, 2.25, -1.0, 7.125, 3.0, 9.0, 8.0, 7.0, 6.0, 5.0]
    return {"inputs": [{"name": "X", "shape": [2, 5], "datatype": "FP32", "data": data}]}


def answer(endpoints: Endpoints, model: str, body: dict) -> tuple[int, dict]:
    """The status and the answer, outputs by name (order aside)."""
    response = requests.post(f"{endpoints.http}/v2/models/{model}/infer", json=body, timeout=120)
    reply = response.json()
    if "outputs" in reply:
        reply["outputs"] = sorted(reply["outputs"], key=lambda output: output["name"])
    return response.status_code, reply


def test_an_ensembles_statistics_count_each_request_in_every_stage_alike(servers):
    """What perf_analyzer reads of an ensemble: it finds the version that served by the queue count, and
    stops when the compute stages' counts differ. Read first before any request to the ensemble (its
    version is there once its steps are ready, as Triton's): first in the module, so that no other test has
    sent the ensemble a request yet."""
    def counts(endpoints):
        (stats,) = requests.get(f"{endpoints.http}/v2/models/ensemble/stats", timeout=30).json()["model_stats"]
        stages = {stage: value["count"] for stage, value in stats["inference_stats"].items()}
        batches = {batch["batch_size"]: batch["compute_infer"]["count"] for batch in stats["batch_stats"]}
        return stages, stats["inference_count"], stats["execution_count"], batches

    def delta(endpoints):
        before = counts(endpoints)  # before any request to it here: a client may read them first
        for rows in (2, 2, 1):
            answer(endpoints, "ensemble", add_sub(rows=rows))
        after = counts(endpoints)
        return ({stage: after[0][stage] - before[0][stage] for stage in after[0]}, after[1] - before[1],
                after[2] - before[2], {size: n - before[3].get(size, 0) for size, n in after[3].items()})

    triton, ours = servers
    assert delta(ours) == delta(triton)


CASES = {
    "BLS exec": ("bls", add_sub()),
    "BLS async_exec gathered": ("bls", add_sub({"fan_out": 5})),
    "BLS to an ensemble": ("bls", add_sub({"target": "ensemble"})),
    "BLS to a decoupled model": ("bls_stream", {"inputs": [{"name": "N", "shape": [1], "datatype": "INT32",
                                                            "data": [4]}]}),
    "request id, requested outputs, timeout": ("introspect", x({"timeout": 5_000_000}, id="req-7",
                                                               outputs=[{"name": "INFO"}])),
    "every output when none is asked for": ("introspect", x(id="req-8")),
    "a missing input": ("add_sub", {"inputs": add_sub()["inputs"][:1]}),
    "tensors and batching from auto_complete_config": ("completed", add_sub(rows=3)),
    "past the batch size auto_complete_config set": ("completed", add_sub(rows=9)),
    "classification with labels": ("scores", {**scores(), "outputs": [
        {"name": "SCORES", "parameters": {"classification": 3}}]}),
    "classification of integers, more classes than labels, binary": ("scores", {**scores(), "outputs": [
        {"name": "RANKS", "parameters": {"classification": 2, "binary_data": False}},
        {"name": "SCORES", "parameters": {"classification": 5}}]}),
    **{f"TritonError {code or 'default'}": ("introspect", x({"fail": code}))
       for code in ("", "INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "UNSUPPORTED", "UNKNOWN", "ALREADY_EXISTS",
                    "CANCELLED")},
}


@pytest.mark.parametrize("case", CASES)
def test_http_answers_agree(servers, case):
    triton, ours = servers
    model, body = CASES[case]
    expected, got = answer(triton, model, body), answer(ours, model, body)
    assert got[0] == expected[0], (got, expected)
    if expected[0] == 200:
        assert got[1] == expected[1]
    elif case.startswith("TritonError"):  # the model's own words, as they are
        assert got[1] == expected[1]


def test_a_bls_call_to_an_unknown_model_fails_with_tritons_status_and_words(servers):
    (triton, ours), body = servers, add_sub({"target": "nope"})
    (status, expected), (got_status, got) = answer(triton, "bls", body), answer(ours, "bls", body)
    assert got_status == status == 500
    assert expected["error"] in got["error"], (got, expected)


@pytest.mark.parametrize("sequence_id", [42, "user-42"])
def test_sequence_requests_tell_the_model_the_same_correlation_id_and_flags(servers, sequence_id):
    def steps(endpoints):
        return [answer(endpoints, "sequence", x({"sequence_id": sequence_id, **flags}))
                for flags in ({"sequence_start": True}, {}, {"sequence_end": True})]

    triton, ours = servers
    assert steps(ours) == steps(triton)


@pytest.mark.parametrize("code", ["", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "UNKNOWN", "NOT_FOUND",
                                  "ALREADY_EXISTS", "CANCELLED"])
def test_grpc_status_of_a_models_error_agrees(servers, code):
    def status(endpoints):
        tensor = grpcclient.InferInput("X", [1], "INT32")
        tensor.set_data_from_numpy(np.array([1], np.int32))
        with pytest.raises(InferenceServerException) as raised:
            grpcclient.InferenceServerClient(endpoints.grpc).infer("introspect", [tensor], parameters={"fail": code})
        return raised.value.status(), raised.value.message()

    triton, ours = servers
    assert status(ours) == status(triton)


def test_a_decoupled_model_over_the_unary_calls_is_refused_alike(servers):
    triton, ours = servers
    body = {"inputs": [{"name": "N", "shape": [1], "datatype": "INT32", "data": [2]}]}
    phrase = "doesn't support models with decoupled transaction policy"
    for endpoints in (triton, ours):
        status, reply = answer(endpoints, "counter", body)
        assert status == 501 and phrase in reply["error"], (endpoints, reply)
        tensor = grpcclient.InferInput("N", [1], "INT32")
        tensor.set_data_from_numpy(np.array([2], np.int32))
        with pytest.raises(InferenceServerException) as raised:
            grpcclient.InferenceServerClient(endpoints.grpc).infer("counter", [tensor])
        assert raised.value.status() == "StatusCode.UNIMPLEMENTED" and phrase in raised.value.message()


def test_a_decoupled_model_streams_the_same_responses_over_grpc(servers):
    def stream(endpoints) -> list:
        client = grpcclient.InferenceServerClient(endpoints.grpc)
        received: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: received.put((result, error)))
        tensor = grpcclient.InferInput("N", [1], "INT32")
        tensor.set_data_from_numpy(np.array([3], np.int32))
        client.async_stream_infer("counter", [tensor], request_id="s")
        answers = [received.get(timeout=60) for _ in range(3)]
        client.stop_stream()
        return [(error, result.as_numpy("Y").tolist(), result.get_response().id) for result, error in answers]

    triton, ours = servers
    assert stream(ours) == stream(triton)


def test_server_metadata_names_the_same_server_and_no_extension_triton_lacks(servers):
    expected, got = (requests.get(f"{endpoints.http}/v2", timeout=30).json() for endpoints in servers)
    assert got["name"] == expected["name"]
    assert set(got["extensions"]) <= set(expected["extensions"])


def test_grpc_class_count_answers_alike(servers):
    def classes(endpoints):
        tensor = grpcclient.InferInput("X", [2, 5], "FP32")
        tensor.set_data_from_numpy(np.array(scores()["inputs"][0]["data"], np.float32).reshape(2, 5))
        wanted = grpcclient.InferRequestedOutput("SCORES", class_count=2)
        result = grpcclient.InferenceServerClient(endpoints.grpc).infer("scores", [tensor], outputs=[wanted])
        return result.as_numpy("SCORES").tolist(), result.get_output("SCORES").datatype

    triton, ours = servers
    assert classes(ours) == classes(triton)


@pytest.mark.parametrize("model", ["add_sub", "bls", "counter", "sequence", "scores", "completed"])
def test_config_completes_the_instance_groups_and_what_the_model_declares_alike(servers, model):
    triton, ours = (requests.get(f"{endpoints.http}/v2/models/{model}/config", timeout=30).json()
                    for endpoints in servers)
    assert ours["instance_group"] == triton["instance_group"]
    assert ours["max_batch_size"] == triton["max_batch_size"]
    assert [(t["name"], t["data_type"], t["dims"]) for t in ours["input"] + ours["output"]] == \
        [(t["name"], t["data_type"], t["dims"]) for t in triton["input"] + triton["output"]]
    assert ("dynamic_batching" in ours) == ("dynamic_batching" in triton)


def test_statistics_have_the_same_fields(servers):
    def fields(endpoints):
        answer(endpoints, "add_sub", add_sub())
        (stats,) = requests.get(f"{endpoints.http}/v2/models/add_sub/stats", timeout=30).json()["model_stats"]
        return sorted(stats), sorted(stats["inference_stats"]), stats["response_stats"], stats["memory_usage"]

    triton, ours = servers
    assert fields(ours) == fields(triton)


def own_metrics(endpoints: Endpoints, prefix: str) -> list[str]:
    """The lines of a model's own metric families (those named ``prefix``...) in the server's /metrics."""
    text = requests.get(endpoints.metrics_url, timeout=30).text
    return sorted(line for line in text.splitlines() if line.split(" ")[-2 if line.startswith("#") else 0]
                  .startswith(prefix))


def test_a_models_own_metrics_read_alike(servers):
    for endpoints in servers:
        for value in (3, 2):
            assert answer(endpoints, "metered", x_of("X", value))[0] == 200
    triton, ours = (own_metrics(endpoints, "metered_") for endpoints in servers)
    assert 'metered_requests{kind="x",model="metered"} 5' in triton
    assert ours == triton


def test_a_request_whose_grpc_deadline_passes_is_cancelled_for_the_model_alike(servers):
    def cancelled(endpoints):
        tensor = grpcclient.InferInput("X", [1], "FP32")
        tensor.set_data_from_numpy(np.array([30], np.float32))
        with pytest.raises(InferenceServerException, match="Deadline"):
            grpcclient.InferenceServerClient(endpoints.grpc).infer("patient", [tensor], client_timeout=0.5)
        wait_for(lambda: any(line.startswith('patient_requests{what="cancelled"} 1')
                             for line in own_metrics(endpoints, "patient_")), 30, "the model to see it cancelled")
        return own_metrics(endpoints, "patient_")

    triton, ours = servers
    assert cancelled(ours) == cancelled(triton)

