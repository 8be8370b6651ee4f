"""Serve handles, numpy in and numpy out: from this process and from another Ray job."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import ray
from ray import serve

from cluster.names import APP_NAME
from deployments.errors import InferenceError


def test_handle_call_numpy_in_numpy_out(server):
    handle = serve.get_deployment_handle("simple", app_name=APP_NAME)
    x = np.arange(16, dtype=np.int32).reshape(1, 16)
    result = handle.infer.remote({"INPUT0": x, "INPUT1": x}).result()
    np.testing.assert_array_equal(result["OUTPUT0"], 2 * x)
    with pytest.raises(InferenceError, match="data-type is 'FP64'"):
        handle.infer.remote({"INPUT0": x.astype(np.float64), "INPUT1": x}).result()


SECOND_JOB = """
import json, sys
import numpy as np
import ray
from ray import serve

ray.init(address=sys.argv[1])
handle = serve.get_deployment_handle("simple", app_name=sys.argv[2])
x = np.arange(16, dtype=np.int32).reshape(1, 16)
result = handle.infer.remote({"INPUT0": x, "INPUT1": np.ones_like(x)}).result()
print("RESULT", json.dumps({name: array.tolist() for name, array in result.items()}))
"""


def test_handle_call_from_another_ray_job(server):
    address = ray.get_runtime_context().gcs_address
    done = subprocess.run([sys.executable, "-c", SECOND_JOB, address, APP_NAME],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["OUTPUT0"] == [[i + 1 for i in range(16)]]
    assert result["OUTPUT1"] == [[i - 1 for i in range(16)]]
