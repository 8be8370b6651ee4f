"""Unit tests run without Ray: starting it here is a mistake, so it fails loudly. Also the in-process
ModelRunner helpers the backend and runner tests share."""

import pytest

from cluster.repository.local_store import LocalStore
from deployments.serving.runner import ModelRunner


def runner(root, name) -> ModelRunner:
    store = LocalStore(root)
    model = ModelRunner(store.config(name), store)
    model.load()
    return model


def run(model: ModelRunner, inputs, outputs=None, version=None):
    (result,) = model.execute([model.prepare(inputs, outputs, version)])
    if isinstance(result, Exception):
        raise result
    return result


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    import ray

    def forbidden(*args, **kwargs):
        raise AssertionError("unit tests must not start Ray; put this test under tests/integration")

    monkeypatch.setattr(ray, "init", forbidden)
