"""The lean floor: the least a KServe v2 server can do for Triton's add_sub model over HTTP, in one process
(uvloop + httptools, no framework), so benchmarks can show how far any real server is from it.

Answers GET /v2/health/ready, /v2/health/live, /v2/models/add_sub (metadata) and POST
/v2/models/add_sub/infer in JSON or the binary tensor extension (Inference-Header-Content-Length), the
sum and the difference of two INT32 tensors, as benchmarks/triton.py's add_sub; `ric perf add_sub --url
URL --protocol http-binary http-json` drives it unchanged (no gRPC, no statistics).

    python benchmarks/lean_floor.py --port 8000
    with run_lean_floor(port) as url: ...        # from Python: a subprocess, stopped on exit
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import httptools
import numpy as np
import uvloop

MODEL, SIZE = "add_sub", 16


def metadata(size: int) -> dict:
    spec = lambda name: {"name": name, "datatype": "INT32", "shape": [-1, size]}
    return {"name": MODEL, "versions": ["1"], "platform": "python",
            "inputs": [spec("INPUT0"), spec("INPUT1")], "outputs": [spec("OUTPUT0"), spec("OUTPUT1")]}


def infer(body: bytes, header_length: int | None) -> tuple[bytes, dict[str, str]]:
    """One v2 request (JSON, or a JSON header of ``header_length`` bytes then raw tensors) -> its answer."""
    request = json.loads(body[:header_length] if header_length else body)
    offset, tensors = header_length or 0, {}
    for spec in request["inputs"]:
        size = spec.get("parameters", {}).get("binary_data_size")
        if size is None:
            tensors[spec["name"]] = np.asarray(spec["data"], dtype=np.int32).reshape(spec["shape"])
        else:
            tensors[spec["name"]] = np.frombuffer(body, np.int32, size // 4, offset).reshape(spec["shape"])
            offset += size
    results = {"OUTPUT0": tensors["INPUT0"] + tensors["INPUT1"], "OUTPUT1": tensors["INPUT0"] - tensors["INPUT1"]}
    binary_default = request.get("parameters", {}).get("binary_data_output", False)
    outputs, blobs = [], []
    for wanted in request.get("outputs") or [{"name": name} for name in results]:
        array = results[wanted["name"]]
        entry = {"name": wanted["name"], "datatype": "INT32", "shape": list(array.shape)}
        if wanted.get("parameters", {}).get("binary_data", binary_default):
            blobs.append(array.tobytes())
            entry["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    answer = {**({"id": request["id"]} if "id" in request else {}), "model_name": MODEL, "model_version": "1",
              "outputs": outputs}
    head = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return b"".join([head, *blobs]), {"Content-Type": "application/octet-stream",
                                      "Inference-Header-Content-Length": str(len(head))}


class Connection(asyncio.Protocol):
    """One client connection: httptools parses, each complete request is answered in order."""

    def __init__(self, size: int):
        self.metadata = json.dumps(metadata(size)).encode()
        self.url, self.headers, self.body = b"", {}, []

    def connection_made(self, transport):
        self.transport, self.parser = transport, httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_begin(self):
        self.url, self.headers, self.body = b"", {}, []

    def on_url(self, url: bytes):
        self.url += url

    def on_header(self, name: bytes, value: bytes):
        self.headers[name.lower()] = value

    def on_body(self, body: bytes):
        self.body.append(body)

    def on_message_complete(self):
        method, path = self.parser.get_method(), self.url.split(b"?")[0]
        status, body, headers = 200, b"", {}
        if method == b"GET" and path in (b"/v2/health/ready", b"/v2/health/live"):
            pass
        elif method == b"GET" and path == f"/v2/models/{MODEL}".encode():
            body, headers = self.metadata, {"Content-Type": "application/json"}
        elif method == b"POST" and path == f"/v2/models/{MODEL}/infer".encode():
            try:
                length = self.headers.get(b"inference-header-content-length")
                body, headers = infer(b"".join(self.body), int(length) if length else None)
            except (KeyError, TypeError, ValueError) as exc:  # a malformed request answers 400
                status, body = 400, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
                headers = {"Content-Type": "application/json"}
        else:
            status, body = 404, b'{"error":"not found"}'
        lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}", f"Content-Length: {len(body)}",
                 *(f"{key}: {value}" for key, value in headers.items())]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        if not self.parser.should_keep_alive():
            self.transport.close()


async def serve(port: int, size: int) -> None:
    loop = asyncio.get_running_loop()
    stopped = loop.create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: stopped.done() or stopped.set_result(None))
    server = await loop.create_server(lambda: Connection(size), "127.0.0.1", port, backlog=1024)
    print(f"lean floor: {MODEL} at http://127.0.0.1:{port}", flush=True)
    await stopped
    server.close()


@contextlib.contextmanager
def run_lean_floor(port: int, size: int = SIZE, timeout_s: float = 30) -> Iterator[str]:
    """Run this server as a subprocess on 127.0.0.1:``port`` until the block ends; yields its base URL."""
    process = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--size", str(size)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout_s
    try:
        while True:
            with contextlib.suppress(urllib.error.URLError, OSError), \
                    urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the lean floor did not start (exit status {process.poll()})")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000)")
    parser.add_argument("--size", type=int, default=SIZE, help="elements per row of each tensor (default 16)")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.size))
