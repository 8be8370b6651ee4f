"""BLS across Ray nodes: a Python model on one node calls a model on another (its handle crosses the nodes),
and that callee's errors, outputs and batching come back as they do on one node."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from tests.cluster.conftest import replica_nodes, serve_on_nodes
from tests.conftest import write_model
from tests.integration.python_models import ADD_SUB, BLS, TENSORS, python

# 0.6 CPUs each on nodes of 1 CPU: the caller and the callee cannot share a node.
APART = 'parameters { key: "num_cpus" value { string_value: "0.6" } }'


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    root = tmp_path_factory.mktemp("bls-nodes")
    write_model(root, "add_sub", python("add_sub", "dynamic_batching {}\n" + APART, TENSORS), {"1/model.py": ADD_SUB})
    write_model(root, "bls", python("bls", "dynamic_batching {}\n" + APART, TENSORS), {"1/model.py": BLS})
    with serve_on_nodes(root, head_cpus=1, worker_cpus=[1], replica_num_cpus=0) as (_, base):
        yield base


def body(parameters: dict | None = None) -> dict:
    x = np.arange(8, dtype=np.int32)
    inputs = [{"name": "INPUT0", "shape": [2, 4], "datatype": "INT32", "data": x.tolist()},
              {"name": "INPUT1", "shape": [2, 4], "datatype": "INT32", "data": [1] * 8}]
    return {"inputs": inputs, **({"parameters": parameters} if parameters else {})}


def test_a_bls_model_on_one_node_calls_a_model_on_another(url):
    (caller,), (callee,) = replica_nodes("bls"), replica_nodes("add_sub")
    assert caller != callee  # placed apart by the CPU arithmetic above
    for parameters in (None, {"fan_out": 4}):
        answer = requests.post(f"{url}/v2/models/bls/infer", json=body(parameters), timeout=120)
        assert answer.status_code == 200, answer.text
        total = next(o["data"] for o in answer.json()["outputs"] if o["name"] == "OUTPUT0")
        assert total == [(parameters or {}).get("fan_out", 1) * (i + 1) for i in range(8)]
    refused = requests.post(f"{url}/v2/models/bls/infer", json=body({"target": "bls"}), timeout=120)
    assert refused.status_code == 400 and "bls -> bls" in refused.json()["error"]
