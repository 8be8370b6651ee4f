"""Triton's trace extension: settings over HTTP and gRPC (stock clients), global and per model, and the
spans of sampled requests: an ensemble request's trace has the ingress's root span, the ensemble's, one
span per step and each step model's stages below it, in time order, written to the trace file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import tritonclient.grpc as grpcclient

from tests.integration.conftest import wait_for

CHAIN = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                    for n in ("A", "B")]}


def post(url: str, body) -> requests.Response:
    return requests.post(url, json=body, timeout=30)


@pytest.fixture
def traced_chain(server):
    """Global trace file chain.jsonl; the chain ensemble traced at rate 1 for two traces. Reset after."""
    settings = post(f"{server}/v2/trace/setting", {"trace_file": "chain.jsonl"}).json()
    model = post(f"{server}/v2/models/chain/trace/setting",
                 {"trace_level": ["TIMESTAMPS"], "trace_rate": "1", "trace_count": "2"})
    assert model.status_code == 200, model.text
    yield Path(settings["trace_file"]), model.json()
    post(f"{server}/v2/models/chain/trace/setting", {"trace_level": None, "trace_rate": None, "trace_count": None})
    post(f"{server}/v2/trace/setting", {"trace_file": None})


def spans_by_trace(path: Path) -> dict[str, list[dict]]:
    traces: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        traces.setdefault(row["trace_id"], []).append(row)
    return traces


def complete(traces: dict[str, list[dict]]) -> list[list[dict]]:
    """The traces with their root and both steps' model stages."""
    return [spans for spans in traces.values() if any(s["parent_id"] is None for s in spans)
            and sum(s["name"] == "compute_infer" for s in spans) == 2]


def test_an_ensemble_request_yields_a_span_per_step_in_time_order(server, trace_dir, traced_chain, endpoints):
    path, settings = traced_chain
    assert path.parent == trace_dir and path.name == "chain.jsonl"
    assert settings["trace_level"] == ["TIMESTAMPS"] and settings["trace_rate"] == "1"
    assert settings["trace_file"] == str(path)  # the global file, as the model has no file of its own
    for _ in range(3):  # the third is not traced: trace_count was 2
        assert post(f"{server}/v2/models/chain/infer", CHAIN).status_code == 200
    seen = lambda: [(s["name"], s["trace_id"][:6], s["parent_id"]) for t in spans_by_trace(path).values() for s in t]  # noqa: E731
    wait_for(lambda: len(complete(spans_by_trace(path))) == 2, timeout_s=60, what=lambda: f"two complete traces: {seen()}")
    traces = spans_by_trace(path)
    assert len(traces) == 2 and len(complete(traces)) == 2
    spans = next(iter(traces.values()))
    by_id = {s["span_id"]: s for s in spans}
    children = lambda span: sorted((s for s in spans if s["parent_id"] == span["span_id"]),  # noqa: E731
                                   key=lambda s: s["start_ns"])
    (root,) = [s for s in spans if s["parent_id"] is None]
    assert root["name"] == "infer chain" and root["attributes"]["model"] == "chain"
    (ensemble,) = children(root)
    assert ensemble["name"] == "ensemble chain"
    steps = children(ensemble)
    assert [s["name"] for s in steps] == ["step 0 simple", "step 1 simple"]  # one child per step
    for step in steps:
        (model,) = children(step)
        assert model["name"] == "model simple" and model["attributes"]["version"] == 1
        stages = children(model)
        assert [s["name"] for s in stages] == ["compute_input", "queue", "compute_infer", "compute_output"]
        events = [e["name"] for e in model["events"]]
        assert events == ["REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_INPUT_END",
                          "COMPUTE_OUTPUT_START", "COMPUTE_END", "REQUEST_END"]
        times = [e["ns"] for e in model["events"]]
        assert times == sorted(times)
        assert step["start_ns"] <= model["start_ns"] <= model["end_ns"] <= step["end_ns"]
        for earlier, later in zip(stages, stages[1:]):
            assert earlier["end_ns"] <= later["start_ns"]
    assert root["start_ns"] <= ensemble["start_ns"] <= steps[0]["start_ns"]
    assert steps[0]["end_ns"] <= steps[1]["start_ns"]  # the chain's second step needs the first's outputs
    assert steps[1]["end_ns"] <= ensemble["end_ns"] <= root["end_ns"]
    assert all(s["parent_id"] in by_id for s in spans if s["parent_id"])
    # the count ran out: the model's settings say so over HTTP and gRPC
    assert requests.get(f"{server}/v2/models/chain/trace/setting", timeout=30).json()["trace_count"] == "0"
    grpc_settings = grpcclient.InferenceServerClient(endpoints.grpc).get_trace_settings("chain", as_json=True)
    assert grpc_settings["settings"]["trace_count"]["value"] == ["0"]
    assert grpc_settings["settings"]["trace_level"]["value"] == ["TIMESTAMPS"]


def test_trace_settings_refuse_what_they_cannot_do(server, endpoints):
    before = requests.get(f"{server}/v2/trace/setting", timeout=30).json()
    assert before["trace_level"] == ["OFF"] and before["trace_rate"] == "1000" and before["trace_count"] == "-1"
    for url, change, words in (
            ("/v2/trace/setting", {"trace_file": "../../etc/cron.d/x"}, "outside the trace folder"),
            ("/v2/trace/setting", {"trace_level": ["TENSORS"]}, "TENSORS is not served"),
            ("/v2/trace/setting", {"trace_rate": "0"}, "trace_rate must be >= 1"),
            ("/v2/trace/setting", {"trace_mode": "opentelemetry"}, "trace_mode 'opentelemetry' is not served"),
            ("/v2/trace/setting", {"sampling": "1"}, "unknown trace setting 'sampling'"),
            ("/v2/models/simple/trace/setting", {"trace_file": "x.jsonl"}, "one per application")):
        response = post(f"{server}{url}", change)
        assert response.status_code == 400 and words in response.json()["error"], (change, response.text)
    assert post(f"{server}/v2/models/nope/trace/setting", {"trace_rate": "1"}).status_code == 404
    with pytest.raises(Exception, match="unknown trace_level 'LOUD'"):
        grpcclient.InferenceServerClient(endpoints.grpc).update_trace_settings(settings={"trace_level": ["LOUD"]})
    assert requests.get(f"{server}/v2/trace/setting", timeout=30).json() == before
    assert "trace" in requests.get(f"{server}/v2", timeout=30).json()["extensions"]
