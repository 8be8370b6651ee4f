"""Shared test fixtures: model repositories generated in temporary folders, nothing downloaded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# A local Ray started by the tests picks 127.0.0.1 only if this is set before Ray is first imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Serve handles left from an earlier module keep pushing metrics from a background thread; between one
# module's ray.shutdown() and the next one's ray.init() Ray would start a whole local cluster for them
# (seen: the next module then deployed onto it and waited forever). Every test starts Ray explicitly.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
# Ray waits 30 s for a new local GCS to bind its port; on 2 busy cores, just after the previous module's Ray
# stopped, a fresh-clone CI run once took longer (four tests failed at setup: "Timed out waiting for file
# .../gcs_server_port_..."). Waiting longer costs nothing when it is quick.
os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")

import time  # noqa: E402

import pytest  # noqa: E402
import ray  # noqa: E402

from cluster.repository.examples import example_repository  # noqa: E402

#: Ray's words when a fresh local node does not come up in time (its raylet's 30 s are not configurable).
_STARTUP_TIMEOUTS = ("The current node timed out during startup", "Timed out waiting for file")


def start_local_ray(**kwargs) -> None:
    """``ray.init(address="local", ...)``, once more after a pause when the node does not come up in time:
    seen on 2 busy cores just after the previous module's Ray stopped (every test of a module then failed at
    setup with one of ``_STARTUP_TIMEOUTS``; the same start seconds later succeeds)."""
    try:
        ray.init(address="local", **kwargs)
    except Exception as exc:
        if not any(words in str(exc) for words in _STARTUP_TIMEOUTS):
            raise
        ray.shutdown()
        time.sleep(5)
        ray.init(address="local", **kwargs)


REPO_ROOT = Path(__file__).resolve().parents[1]
#: A plain-form Python model for the stub tests: crashes its process on X == 13, hangs on X == 7, else answers
#: X + 1 and the pid it ran in.
FLAKY_PYTHON_MODEL = """
import os, time
import numpy as np

def infer(inputs):
    x = inputs["X"]
    if (x == 13).any():
        os._exit(3)
    if (x == 7).any():
        time.sleep(3600)
    return {"Y": x + 1, "PID": np.full(x.shape, os.getpid(), np.int64)}
"""


def copy_example_repository(target: Path) -> Path:
    """A writable copy of the example repository with its model files generated."""
    shutil.copytree(example_repository(), target)
    return target


def write_model(root: Path, name: str, config: str, files: dict[str, bytes | str], config_name: str = "config.pbtxt") -> Path:
    """Write ``<root>/<name>/<config_name>`` and version files given as ``{"1/model.py": ...}``."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_name).write_text(config)
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return folder


@pytest.fixture(scope="session")
def example_root() -> Path:
    return example_repository()


def dashboard_queries() -> list[str]:
    """Every PromQL query of configs/grafana/ric.json (panels and variables)."""
    dashboard = json.loads((REPO_ROOT / "configs" / "grafana" / "ric.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return queries + [variable["query"]["query"] for variable in dashboard["templating"]["list"]]
