"""The local store and uploaded models: names that would leave the repository, the listing of models and
versions, and a load's files written once per version and served from there."""

from __future__ import annotations

import pickle

import pytest

from cluster.repository.examples import onnx_mlp
from cluster.repository.local_store import LocalStore
from cluster.repository.uploaded import UploadedModel
from deployments.config.model_config import ConfigError, ModelConfig
from deployments.errors import InferenceError
from deployments.serving.runner import ModelRunner
from tests.conftest import write_model


def test_store_refuses_names_that_leave_the_repository(tmp_path):
    store = LocalStore(tmp_path)
    for name in ("..", "../etc", "/abs", "a/b", ""):
        with pytest.raises(InferenceError, match="invalid model name"):
            store.model_dir(name)


def test_store_lists_models_and_versions(tmp_path):
    write_model(tmp_path, "m", "", {"1/model.onnx": b"", "10/model.onnx": b"", "x/ignored": b"", "0/ignored": b""})
    (tmp_path / ".hidden").mkdir()
    store = LocalStore(tmp_path)
    assert store.models() == ["m"] and store.versions("m") == [1, 10]
    assert store.fetch("m", 10) == tmp_path.resolve() / "m" / "10"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.pbtxt"):
        store.config("empty")


def test_an_uploaded_model_writes_each_version_once_and_serves_from_it(tmp_path, monkeypatch):
    monkeypatch.setenv("RIC_CACHE_DIR", str(tmp_path))
    files = {"1/model.onnx": onnx_mlp(seed=1), "2/model.onnx": onnx_mlp(seed=2), "notes.txt": b"kept aside"}
    uploaded = UploadedModel("sent", ModelConfig(name="sent", platform="onnxruntime_onnx"), files)
    assert uploaded.versions("sent") == [1, 2]
    folder = uploaded.fetch("sent", 2)
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"] and uploaded.fetch("sent", 2) == folder
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left
    assert len(pickle.dumps(uploaded)) < 2048  # replicas get digests; the files stay out of their arguments
    again = UploadedModel("sent", uploaded.config("sent"), {**files, "2/model.onnx": onnx_mlp(seed=3)})
    assert again.fingerprint("sent", 2) != uploaded.fingerprint("sent", 2) and again.fetch("sent", 2) != folder
    assert not folder.exists()  # the earlier upload's folder is evicted from the node's cache
    runner = ModelRunner(uploaded.config("sent"), uploaded)
    runner.load()
    assert sorted(runner.backends) == [2]  # the default policy: the latest version
    for bad in ({"../1/model.onnx": b""}, {"1/../../x": b""}, {"model.onnx": b""}):
        with pytest.raises(InferenceError, match="invalid file path|hold no version"):
            UploadedModel("sent", uploaded.config("sent"), bad)
