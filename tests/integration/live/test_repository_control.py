"""Triton's model control API over HTTP and gRPC with stock clients: unload and load (with config and file
overrides), models new to the application loaded as applications of their own and unloaded freeing their
resources, ensembles, bad loads refused with nothing kept, and a sync restart."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import requests

from cluster.repository.examples import onnx_mlp
from tests.conftest import write_model
from tests.integration.conftest import settled, wait_for
from tests.integration.live.conftest import (
    BODY, MAX_UPLOADED_BYTES, call_until_stopped, cpus_free, expected, land_version, serves_max_batch_size,
)


def test_unload_and_load_through_the_repository_api(live):
    import tritonclient.http as httpclient

    _, server = live
    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    free = settled(cpus_free, pause_s=0.5)  # Ray's resource view lags the actors a moment
    client.unload_model("live")  # stock tritonclient; returns once the replicas are gone
    wait_for(lambda: cpus_free() == pytest.approx(free + 2 * 0.25), timeout_s=30,  # both replicas' CPUs free
             what=lambda: f"the replicas' CPUs free: {free} then {cpus_free()}")
    response = requests.post(f"{server}/v2/models/live/infer", json=BODY, timeout=30)
    assert response.status_code == 503 and "unloaded through the repository API" in response.json()["error"]
    (row,) = client.get_model_repository_index()
    assert row["state"] == "UNAVAILABLE" and "unloaded" in row["reason"]
    assert requests.post(f"{server}/v2/repository/index", json={"ready": True}, timeout=30).json() == []
    assert requests.get(f"{server}/v2/health/ready", timeout=30).status_code == 200  # unloaded: not counted
    client.load_model("live")
    wait_for(lambda: cpus_free() == pytest.approx(free), timeout_s=30,
             what=lambda: f"the replicas' CPUs reserved again: {free} then {cpus_free()}")
    wait_for(lambda: requests.post(f"{server}/v2/models/live/infer", json=BODY, timeout=30).status_code == 200,
             timeout_s=60, what="live to serve again")
    for action, status, message in [("load", 404, "Request for unknown model: 'nope' is not found"), ("frobnicate", 404, "no route")]:
        response = requests.post(f"{server}/v2/repository/models/nope/{action}", timeout=30)
        assert response.status_code == status and message in response.json()["error"]


def test_load_with_a_config_override_then_without(live):
    import json

    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    _, server = live
    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    override = {"name": "live", "platform": "onnxruntime_onnx", "max_batch_size": 2,
                "instance_group": [{"count": 2}]}
    client.load_model("live", config=json.dumps(override))  # stock tritonclient, Triton's override
    wait_for(lambda: serves_max_batch_size(server, 2), timeout_s=90, what="the override on every replica")
    with pytest.raises(InferenceServerException, match="max_batch_sise"):
        client.load_model("live", config=json.dumps({**override, "max_batch_sise": 2}))
    for body, message in [({"parameters": "x"}, "must be an object"),
                          ({"parameters": {"config": 5}}, "must be a mapping of fields"),
                          ({"parameters": {"config": "{not json"}}, "the config parameter of the load of 'live'")]:
        response = requests.post(f"{server}/v2/repository/models/live/load", json=body, timeout=30)
        assert response.status_code == 400 and message in response.json()["error"], response.text
    client.load_model("live")  # a load without a config goes back to the repository's
    wait_for(lambda: serves_max_batch_size(server, 8), timeout_s=90, what="the repository's config again")


def test_unload_and_load_over_grpc(served):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(served[1].grpc)
    client.unload_model("live")
    assert not client.is_model_ready("live")
    client.load_model("live")
    assert client.is_model_ready("live")
    client.load_model("live", config='{"name": "live", "platform": "onnxruntime_onnx", "max_batch_size": 2}')
    wait_for(lambda: client.get_model_config("live").config.max_batch_size == 2, timeout_s=90,
             what="the override over gRPC")
    client.load_model("live")
    wait_for(lambda: client.get_model_config("live").config.max_batch_size == 8, timeout_s=90,
             what="the repository's config over gRPC")


def test_a_model_new_to_the_repository_loads_beside_the_others_and_unloads_freeing_its_resources(served):
    import shutil

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from ray import serve

    from cluster.names import APP_NAME

    root, endpoints = served
    server = endpoints.http
    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    free = cpus_free()
    write_model(root, "fresh", 'platform: "onnxruntime_onnx" max_batch_size: 8 instance_group [ { count: 2 } ]',
                {"1/model.onnx": onnx_mlp(seed=5)})
    url = f"{server}/v2/models/fresh/infer"
    try:
        wait_for(lambda: {"name": "fresh", "version": "", "state": "UNAVAILABLE", "reason": "not loaded"}
                 in client.get_model_repository_index(), timeout_s=30, what="fresh listed as not loaded")
        response = requests.post(url, json=BODY, timeout=30)
        assert response.status_code == 503 and "is not loaded" in response.json()["error"]
        stop, answers = threading.Event(), []
        others = [threading.Thread(target=call_until_stopped, args=(f"{server}/v2/models/live/infer", stop, answers))
                  for _ in range(2)]
        for thread in others:
            thread.start()
        try:
            client.load_model("fresh")  # stock tritonclient; returns once it serves
            for _ in range(5):
                body = requests.post(url, json=BODY, timeout=30).json()
                assert body["model_version"] == "1", body
                got = np.array(body["outputs"][0]["data"], np.float32).reshape(1, 10)
                np.testing.assert_allclose(got, expected(5), rtol=1e-4, atol=1e-5)
            grpc = grpcclient.InferenceServerClient(endpoints.grpc)
            assert grpc.is_model_ready("fresh")
            app = f"{APP_NAME}-model-fresh"
            assert serve.status().applications[app].status == "RUNNING"
            wait_for(lambda: cpus_free() == pytest.approx(free - 2 * 0.25), timeout_s=30,
                     what=lambda: f"two replicas' CPUs reserved: {free} then {cpus_free()}")
            land_version(root, 2, {"model.onnx": onnx_mlp(seed=6)}, model="fresh")  # the sync follows it too
            wait_for(lambda: grpc.get_model_metadata("fresh").versions == ["2"], timeout_s=60,
                     what="version 2 of fresh")
            client.unload_model("fresh")
            assert app not in serve.status().applications
            wait_for(lambda: cpus_free() == pytest.approx(free), timeout_s=30,
                     what=lambda: f"the replicas' CPUs free again: {free} then {cpus_free()}")
            response = requests.post(url, json=BODY, timeout=30)
            assert response.status_code == 503 and "is not loaded" in response.json()["error"]
        finally:
            stop.set()
            for thread in others:
                thread.join(timeout=60)
        assert answers and set(answers) == {200}, sorted(set(answers))
    finally:
        shutil.rmtree(root / "fresh")


def test_a_new_model_that_cannot_load_is_refused_with_its_reason_and_nothing_is_kept(served):
    import shutil

    import tritonclient.grpc as grpcclient
    from ray import serve
    from tritonclient.utils import InferenceServerException

    root, endpoints = served
    client = grpcclient.InferenceServerClient(endpoints.grpc)
    write_model(root, "corrupt", 'platform: "onnxruntime_onnx"', {"1/model.onnx": b"not a model"})
    write_model(root, "misspelt", 'platform: "onnxruntime_onnx" max_batch_sise: 2', {"1/model.onnx": onnx_mlp()})
    try:
        wait_for(lambda: {"corrupt", "misspelt"} <= {m.name for m in client.get_model_repository_index().models},
                 timeout_s=30, what="both models listed")
        for model, message in [("corrupt", "failed to load 'corrupt': version 1"), ("misspelt", "max_batch_sise"),
                               ("../live", "invalid model name"), ("nope", "Request for unknown model: 'nope' is not found")]:
            with pytest.raises(InferenceServerException, match=message) as caught:
                client.load_model(model)
            assert caught.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), caught.value
        assert not [name for name in serve.status().applications if "-model-" in name]
        assert requests.post(f"{endpoints.http}/v2/models/live/infer", json=BODY, timeout=30).status_code == 200
    finally:
        shutil.rmtree(root / "corrupt")
        shutil.rmtree(root / "misspelt")


def test_an_ensemble_new_to_the_repository_loads_with_its_new_step_model(served):
    import shutil

    import tritonclient.http as httpclient
    from ray import serve

    from cluster.names import APP_NAME

    root, endpoints = served
    client = httpclient.InferenceServerClient(endpoints.http.removeprefix("http://"))
    write_model(root, "head", 'platform: "onnxruntime_onnx" max_batch_size: 8',
                {"1/model.onnx": onnx_mlp((10, 16, 10), seed=8)})
    write_model(root, "pipeline", (
        'platform: "ensemble" max_batch_size: 8 '
        'input [ { name: "X", data_type: TYPE_FP32, dims: [ 64 ] } ] '
        'output [ { name: "Y", data_type: TYPE_FP32, dims: [ 10 ] } ] '
        'ensemble_scheduling { step [ '
        '{ model_name: "live" model_version: -1 input_map { key: "INPUT0" value: "X" } '
        '  output_map { key: "OUTPUT0" value: "H" } }, '
        '{ model_name: "head" model_version: -1 input_map { key: "INPUT0" value: "H" } '
        '  output_map { key: "OUTPUT0" value: "Y" } } ] }'), {"1/.keep": b""})
    try:
        wait_for(lambda: "pipeline" in {r["name"] for r in client.get_model_repository_index()}, timeout_s=30,
                 what="the ensemble listed")
        client.load_model("pipeline")  # loads its step 'head' too, as Triton
        body = {"inputs": [{"name": "X", "shape": [2, 64], "datatype": "FP32", "data": [0.5] * 128}]}
        response = requests.post(f"{endpoints.http}/v2/models/pipeline/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["shape"] == [2, 10]
        assert {f"{APP_NAME}-model-head", f"{APP_NAME}-model-pipeline"} <= set(serve.status().applications)
        client.unload_model("pipeline")
        client.unload_model("head")
        assert not [name for name in serve.status().applications if "-model-" in name]
    finally:
        shutil.rmtree(root / "head")
        shutil.rmtree(root / "pipeline")


def test_a_load_with_files_serves_the_model_from_them(served):
    import base64
    import json

    import tritonclient.grpc as grpcclient
    from ray import serve
    from tritonclient.utils import InferenceServerException

    from cluster.names import APP_NAME

    _, endpoints = served
    client = grpcclient.InferenceServerClient(endpoints.grpc)
    config = json.dumps({"name": "sent", "platform": "onnxruntime_onnx", "max_batch_size": 8})
    url = f"{endpoints.http}/v2/models/sent/infer"

    def answer() -> np.ndarray:
        body = requests.post(url, json=BODY, timeout=30).json()
        return np.array(body["outputs"][0]["data"], np.float32).reshape(1, 10)

    client.load_model("sent", config=config, files={"file:1/model.onnx": onnx_mlp(seed=11)})  # stock client
    np.testing.assert_allclose(answer(), expected(11), rtol=1e-4, atol=1e-5)
    # over HTTP the files are base64 text; a second load replaces the model
    files = {"file:1/model.onnx": base64.b64encode(onnx_mlp(seed=12)).decode()}
    response = requests.post(f"{endpoints.http}/v2/repository/models/sent/load",
                             json={"parameters": {"config": config, **files}}, timeout=120)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(answer(), expected(12), rtol=1e-4, atol=1e-5)
    for model, parameters, message in [
        ("sent", {"file:1/model.onnx": "AAAA"}, "needs the 'config' parameter"),
        ("sent", {"config": config, "file:../model.onnx": "AAAA"}, "invalid file path"),
        ("sent", {"config": config, "file:1/model.onnx": "not base64!"}, "is not base64"),
        ("sent", {"config": config, "file:model.onnx": "AAAA"}, "hold no version"),
        ("live", {"config": config.replace('"sent"', '"live"'), "file:1/model.onnx": "AAAA"},
         "served by the application itself"),
    ]:
        response = requests.post(f"{endpoints.http}/v2/repository/models/{model}/load",
                                 json={"parameters": parameters}, timeout=60)
        assert response.status_code == 400 and message in response.json()["error"], response.text
    too_large = requests.post(f"{endpoints.http}/v2/repository/models/sent/load",
                              data=b"x" * (64 * 2**20 + 1), timeout=60)  # over max_request_bytes
    assert too_large.status_code == 413 and "exceeds the limit" in too_large.json()["error"]
    with pytest.raises(InferenceServerException, match="failed to load 'sent'"):
        client.load_model("sent", config=config, files={"file:1/model.onnx": b"not a model"})
    assert f"{APP_NAME}-model-sent" not in serve.status().applications  # the failed load replaced it: nothing kept
    client.load_model("sent", config=config, files={"file:1/model.onnx": onnx_mlp(seed=11)})
    assert len(uploaded_files_kept()) == 1  # kept once, by content, in Ray's key-value store
    # uploaded models share a quota (this module's: MAX_UPLOADED_BYTES)
    big = {"file:1/model.onnx": onnx_mlp(seed=13), "file:1/padding.bin": bytes(MAX_UPLOADED_BYTES)}
    with pytest.raises(InferenceServerException, match="do not fit beside the other uploaded models") as info:
        client.load_model("other", config=config.replace('"sent"', '"other"'), files=big)
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    client.unload_model("sent")
    assert f"{APP_NAME}-model-sent" not in serve.status().applications
    assert uploaded_files_kept() == []  # an unloaded upload's files are deleted
    response = requests.post(url, json=BODY, timeout=30)
    assert response.status_code == 404 and "Request for unknown model: 'sent' is not found" in response.json()["error"]


def uploaded_files_kept() -> list[bytes]:
    from ray.experimental import internal_kv

    from cluster.repository.uploaded import KV_NAMESPACE, KV_PREFIX

    return internal_kv._internal_kv_list(KV_PREFIX, namespace=KV_NAMESPACE)


def test_a_model_loads_and_unloads_another_through_the_repository_api(served):
    """pb_utils.load_model / unload_model from a Python model loaded later (an application of its own, whose
    calls reach the Ingress and the models of the application it joined), in explicit model control mode."""
    import shutil

    import tritonclient.http as httpclient

    from tests.integration.python_models import CONTROLLER, INTROSPECT_TENSORS, python

    root, endpoints = served
    client = httpclient.InferenceServerClient(endpoints.http.removeprefix("http://"))
    write_model(root, "controller", python("controller", "", INTROSPECT_TENSORS, 0), {"1/model.py": CONTROLLER})
    write_model(root, "second", 'platform: "onnxruntime_onnx" max_batch_size: 8', {"1/model.onnx": onnx_mlp(seed=7)})

    def control(**parameters) -> str:
        body = {"inputs": [{"name": "X", "shape": [1], "datatype": "INT32", "data": [1]}], "parameters": parameters}
        reply = requests.post(f"{endpoints.http}/v2/models/controller/infer", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        return reply.json()["outputs"][0]["data"][0]

    try:
        wait_for(lambda: {"controller", "second"} <= {r["name"] for r in client.get_model_repository_index()},
                 timeout_s=30, what="the new models listed")
        client.load_model("controller")
        assert control(ready="live") == "True"  # a model loaded later reaches the application's models
        assert control(load="second") == "done"
        assert client.is_model_ready("second")
        answer = requests.post(f"{endpoints.http}/v2/models/second/infer", json=BODY, timeout=30).json()
        np.testing.assert_allclose(np.array(answer["outputs"][0]["data"], np.float32).reshape(1, 10), expected(7),
                                   rtol=1e-4, atol=1e-5)
        assert control(unload="second") == "done"
        assert not client.is_model_ready("second")
        assert control(load="nope").startswith("failed to load model 'nope'")  # the API's refusal, as it words it
    finally:
        for model in ("second", "controller"):
            try:
                client.unload_model(model)
            except Exception:  # noqa: BLE001 (already unloaded)
                pass
            shutil.rmtree(root / model)


def test_models_loaded_later_and_config_overrides_survive_a_sync_restart_and_go_with_the_application(served):
    """The last test of the module: it deletes the application."""
    import ray
    import tritonclient.http as httpclient
    from ray import serve

    from cluster.app import SYNC_NAME
    from cluster.names import APP_NAME

    root, endpoints = served
    client = httpclient.InferenceServerClient(endpoints.http.removeprefix("http://"))
    write_model(root, "later", 'platform: "onnxruntime_onnx"', {"1/model.onnx": onnx_mlp(seed=7)})
    app = f"{APP_NAME}-model-later"

    def sync_actors() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if f"#{SYNC_NAME}#" in a["name"]}

    client.load_model("later")
    # what users changed survives too: a config given with a load
    config = client.get_model_config("live")
    client.load_model("live", config=json.dumps({**config, "max_batch_size": 2}))
    (killed,) = sync_actors()
    ray.kill(ray.get_actor(killed, namespace="serve"), no_restart=True)
    wait_for(lambda: sync_actors() - {killed}, timeout_s=90, what="Serve to start a new sync replica")
    time.sleep(2)  # four poll intervals: a sync that forgot the override would have pushed the store's config
    assert serves_max_batch_size(endpoints.http, 2)
    # the new sync replica adopted the model's application: unload finds and deletes it
    wait_for(lambda: client.unload_model("later") is None and app not in serve.status().applications, timeout_s=90,
             what=lambda: f"the unload after the restart: {sorted(serve.status().applications)}")
    client.load_model("later")
    assert requests.post(f"{endpoints.http}/v2/models/later/infer", json=BODY, timeout=30).status_code == 200
    serve.delete(APP_NAME)
    wait_for(lambda: not serve.status().applications, timeout_s=90,
             what=lambda: f"both applications deleted: {sorted(serve.status().applications)}")
