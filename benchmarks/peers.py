"""What the server is compared with: the same model in process (the limit) and MLServer (a V2 peer).

MLServer runs from its own virtual environment (benchmarks/install_mlserver.sh) with a small MLModel that
runs onnxruntime, as it has no ONNX runtime of its own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MLSERVER_VENV = ROOT / ".venv-mlserver"

MLSERVER_MODEL = '''\
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        self.names = [output.name for output in self.session.get_outputs()]
        return True

    async def predict(self, request: InferenceRequest) -> InferenceResponse:
        feeds = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in request.inputs}
        outputs = self.session.run(None, feeds)
        return InferenceResponse(model_name=self.name, outputs=[
            NumpyCodec.encode_output(name, array) for name, array in zip(self.names, outputs)])
'''


def in_process(repository: Path, model: str, batch: int, seconds: float = 2.0) -> float:
    """Inferences/s of one model version through our own backend in this process, at ``batch`` rows."""
    from cluster.repository.stores import open_store
    from deployments.backends import backend_class

    config = open_store(str(repository)).config(model)
    backend = backend_class("onnxruntime")(config, repository / model / "1")
    backend.load()
    spec = backend.config.input[0]
    tensors = {spec.name: np.random.default_rng(0).standard_normal((batch, *spec.dims)).astype(np.float32)}
    for _ in range(20):
        backend.infer(tensors)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        backend.infer(tensors)
        runs += 1
    backend.unload()
    return runs * batch / elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def install_mlserver() -> bool:
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "install_mlserver.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"MLServer did not install: {done.stderr[-500:]}", flush=True)
    return done.returncode == 0


def mlserver_version() -> str:
    done = subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-c", "import mlserver; print(mlserver.__version__)"],
                          capture_output=True, text=True)
    return done.stdout.strip()


class MLServer:
    """MLServer serving ``model.onnx`` files as V2 models, started and stopped by this object."""

    def __init__(self, workdir: Path, models: dict[str, tuple[Path, int, int]]):
        """``models``: name -> (onnx file, input width, output width)."""
        self.workdir = workdir
        self.http_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "settings.json").write_text(json.dumps({
            "http_port": self.http_port, "grpc_port": free_port(), "metrics_port": free_port(), "host": "127.0.0.1",
            # MLServer 1.7.1's worker processes fail to start beside the uvloop that pip picks today
            # ("no current event loop"); 0 runs inference in the server process itself.
            "parallel_workers": 0,
        }))
        for name, (onnx_file, width, out_width) in models.items():
            folder = workdir / name
            folder.mkdir(exist_ok=True)
            (folder / "onnx_model.py").write_text(MLSERVER_MODEL)
            (folder / "model-settings.json").write_text(json.dumps({
                "name": name, "implementation": "onnx_model.OnnxModel",
                "parameters": {"uri": str(onnx_file.resolve())},
                "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, width]}],
                "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, out_width]}],
            }))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def __enter__(self) -> "MLServer":
        log = open(self.workdir / "mlserver.log", "w")
        self.process = subprocess.Popen([str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(self.workdir)],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        asyncio.run(self._wait_ready(timeout_s=120))
        return self

    async def _wait_ready(self, timeout_s: float) -> None:
        import aiohttp

        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    async with session.get(f"{self.url}/v2/health/ready") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        log = (self.workdir / "mlserver.log").read_text()[-1500:]
        self.__exit__()
        raise RuntimeError(f"MLServer did not become ready:\n{log}")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
