"""Unit tests run without Ray: starting it here is a mistake, so it fails loudly."""

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    import ray

    def forbidden(*args, **kwargs):
        raise AssertionError("unit tests must not start Ray; put this test under tests/integration")

    monkeypatch.setattr(ray, "init", forbidden)
