"""Real NVIDIA Triton on this machine: a benchmark peer, and the oracle ric's answers are checked against.

benchmarks/install_triton.sh installs it into .venv-triton/ (the tritonserver binary of nvidia-pytriton
0.7.0, CPU only, with its Python backend; the backend's stub runs on the system's Python 3.11 and numpy).
This module writes a model both servers take unchanged and runs Triton on it:

    from benchmarks.triton import run_triton, write_add_sub_repository
    repository = write_add_sub_repository(Path(tmp) / "repository")
    with run_triton(repository, http_port, grpc_port, metrics_port) as url:   # http://127.0.0.1:PORT
        ...  # e.g. ric perf add_sub --url URL --grpc-url 127.0.0.1:GRPC_PORT --protocol http-binary grpc

The same folder serves with ``ric serve REPOSITORY`` (ric runs the Python backend through its own
triton_python_backend_utils).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_VENV = ROOT / ".venv-triton"

ADD_SUB_CONFIG = """\
# Triton's add_sub example, Python backend: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
backend: "python"
max_batch_size: 8
dynamic_batching { }
input [
  { name: "INPUT0", data_type: TYPE_INT32, dims: [ SIZE ] },
  { name: "INPUT1", data_type: TYPE_INT32, dims: [ SIZE ] }
]
output [
  { name: "OUTPUT0", data_type: TYPE_INT32, dims: [ SIZE ] },
  { name: "OUTPUT1", data_type: TYPE_INT32, dims: [ SIZE ] }
]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""

ADD_SUB_MODEL = '''\
"""Triton's add_sub Python-backend example: the sum and the difference of two INT32 tensors."""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtypes = {name: pb_utils.triton_string_to_numpy(
            pb_utils.get_output_config_by_name(config, name)["data_type"]) for name in ("OUTPUT0", "OUTPUT1")}

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.dtypes["OUTPUT0"])),
                pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(self.dtypes["OUTPUT1"])),
            ]))
        return responses

    def finalize(self):
        pass
'''


def _server_dir() -> Path | None:
    found = sorted(TRITON_VENV.glob("lib/python3*/site-packages/pytriton/tritonserver"))
    return found[0] if found else None


def triton_binary() -> Path | None:
    """The installed tritonserver, or None when install_triton.sh has not run (or did not finish)."""
    server = _server_dir()
    if server is None or not (server / "backends" / "python" / "triton_python_backend_stub").exists():
        return None
    binary = server / "bin" / "tritonserver"
    return binary if os.access(binary, os.X_OK) else None


def write_add_sub_repository(root: Path, size: int = 16) -> Path:
    """``root/add_sub``: Triton's add_sub Python model over INT32 [size] (batched, up to 8); returns root."""
    model = root / "add_sub"
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(ADD_SUB_CONFIG.replace("SIZE", str(size)))
    (model / "1" / "model.py").write_text(ADD_SUB_MODEL)
    return root


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):  # not listening yet, or 400 while models load
        return False


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # stubs Triton left behind, in the session it led


@contextlib.contextmanager
def run_triton(repository: Path, http_port: int, grpc_port: int, metrics_port: int | None = None, *,
               extra_args: Sequence[str] = (), timeout_s: float = 120, grace_s: float = 15) -> Iterator[str]:
    """Run tritonserver on ``repository`` (127.0.0.1 only) until the block ends; yields its HTTP base URL.

    Waits until /v2/health/ready answers 200 (every model loaded); raises RuntimeError with the log's tail
    when Triton exits or is not ready within ``timeout_s``. ``metrics_port`` None or 0: no metrics.
    On exit: SIGTERM, then SIGKILL after ``grace_s``.
    """
    binary = triton_binary()
    if binary is None:
        raise RuntimeError(f"Triton is not installed in {TRITON_VENV}: run benchmarks/install_triton.sh")
    server = binary.parents[1]
    command = [str(binary), "--model-repository", str(Path(repository).resolve()),
               "--backend-directory", str(server / "backends"), "--cache-directory", str(server / "caches"),
               "--http-address", "127.0.0.1", "--http-port", str(http_port),
               "--grpc-address", "127.0.0.1", "--grpc-port", str(grpc_port),
               "--allow-gpu-metrics", "false", "--exit-timeout-secs", str(max(1, int(grace_s) - 5))]
    if metrics_port:
        command += ["--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port)]
    else:
        command += ["--allow-metrics", "false"]
    command += list(extra_args)
    # The libraries it links lie in site-packages/nvidia_pytriton.libs, found through its RPATH (no
    # LD_LIBRARY_PATH needed). The Python backend's stub embeds the system's libpython3.11, which
    # takes its prefix from the first python3 on PATH: with a venv's first (ric's .venv, numpy 2), the stub
    # loads that venv's site-packages and answers "output tensor shape does not match size of output".
    # /usr/bin first keeps it on the system's Python and Debian's numpy.
    env = {**os.environ, "PATH": f"/usr/bin:{os.environ.get('PATH', '')}", "PYTHONNOUSERSITE": "1"}
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{http_port}"
    with tempfile.TemporaryDirectory(prefix="ric-triton-") as tmp:
        log_path = Path(tmp) / "tritonserver.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while not _ready(url):
                if process.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited with status {process.returncode}" if process.poll() is not None
                           else f"was not ready after {timeout_s:g} s")
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"tritonserver {why}; its log ends:\n{tail}")
                time.sleep(0.25)
            yield url
        finally:
            _stop(process, grace_s)
