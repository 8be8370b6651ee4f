"""The transports ``ric perf`` drives: one prebuilt request per client (HTTP JSON or binary, gRPC, or a
Serve handle), and the request data made from a model's v2 metadata."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deployments.config.dtypes import numpy_dtype, v2_datatype

#: handle: cluster.client's model client, as another Ray job calls a model (the node's ingress listener where
#: one answers); serve-handle: the model deployment's own Serve handle.
PROTOCOLS = ("http-json", "http-binary", "grpc", "handle", "serve-handle")


# -- request data ------------------------------------------------------------------------------------------

def request_tensors(metadata: dict[str, Any], batch: int = 1, seed: int = 0,
                    shapes: dict[str | None, list[int]] | None = None, input_bytes: int | None = None
                    ) -> dict[str, np.ndarray]:
    """Random inputs for a model from its v2 metadata: a leading -1 becomes ``batch``, other -1 dims 1, or
    what ``shapes`` gives (an input's dims after the batch dim, by input name; None: for every input), or,
    with ``input_bytes``, the one variable dim that makes each input that many bytes. A shape the model
    does not take raises ValueError."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for spec in metadata["inputs"]:
        dims = [int(d) for d in spec["shape"]]
        batched = bool(dims) and dims[0] < 0  # v2 metadata shows a batching model's batch dim as -1
        dtype = numpy_dtype(spec["datatype"])
        given = (shapes or {}).get(spec["name"], (shapes or {}).get(None))
        if given is not None:
            inner = _given_shape(spec, dims[1:] if batched else dims, given)
        elif input_bytes is not None:
            inner = _shape_for_bytes(spec, dims[1:] if batched else dims, input_bytes, dtype)
        else:
            inner = [1 if d < 0 else d for d in (dims[1:] if batched else dims)]
        shape = [batch, *inner] if batched else inner
        if spec["datatype"] == "BYTES":
            tensors[spec["name"]] = np.full(shape, b"x", dtype=object)
        elif np.issubdtype(dtype, np.floating):
            tensors[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        else:
            tensors[spec["name"]] = rng.integers(0, 8, shape).astype(dtype)
    return tensors


def _given_shape(spec: dict[str, Any], dims: list[int], given: list[int]) -> list[int]:
    if len(given) != len(dims) or any(d >= 0 and d != g for d, g in zip(dims, given)):
        raise ValueError(f"input '{spec['name']}' takes shape {dims} after the batch dimension (-1: any), not "
                         f"{given}")
    return list(given)


def _shape_for_bytes(spec: dict[str, Any], dims: list[int], size: int, dtype) -> list[int]:
    variable = [i for i, d in enumerate(dims) if d < 0]
    if len(variable) != 1 or spec["datatype"] == "BYTES":
        raise ValueError(f"--input-bytes needs inputs with one variable dimension and a fixed-size datatype; "
                         f"'{spec['name']}' is {spec['datatype']} {dims} (use --shape)")
    fixed = int(np.prod([d for d in dims if d >= 0])) * np.dtype(dtype).itemsize
    shape = list(dims)
    shape[variable[0]] = max(1, size // fixed)
    return shape


def parse_shape(text: str) -> tuple[str | None, list[int]]:
    """``--shape`` ``[INPUT:]D1,D2,...``: an input's dims after the batch dimension (no name: every input)."""
    name, _, dims = text.rpartition(":")
    try:
        parsed = [int(d) for d in dims.split(",")]
    except ValueError:
        raise ValueError(f"--shape takes [INPUT:]D1,D2,..., not {text!r}") from None
    if not parsed or any(d < 1 for d in parsed):
        raise ValueError(f"--shape takes dimensions of at least 1, not {text!r}")
    return name or None, parsed


def output_names(metadata: dict[str, Any]) -> list[str]:
    return [spec["name"] for spec in metadata.get("outputs", [])]


# -- transports ----------------------------------------------------------------------------------------------

class HttpClient:
    """POST ``{base}/v2/models/{model}/infer`` with one prebuilt body (JSON or the binary extension)."""

    def __init__(self, base: str, model: str, tensors: dict[str, np.ndarray], outputs: list[str], binary: bool,
                 concurrency: int = 64):
        import aiohttp
        import tritonclient.http as triton_http

        inputs = []
        for name, array in tensors.items():
            infer_input = triton_http.InferInput(name, list(array.shape), v2_datatype(array.dtype))
            infer_input.set_data_from_numpy(array, binary_data=binary)
            inputs.append(infer_input)
        requested = [triton_http.InferRequestedOutput(name, binary_data=binary) for name in outputs] or None
        body, json_size = triton_http.InferenceServerClient.generate_request_body(inputs, requested)
        self.body = body
        self.headers = {"Content-Type": "application/octet-stream" if json_size else "application/json"}
        if json_size:
            self.headers["Inference-Header-Content-Length"] = str(json_size)
        self.url = f"{base.rstrip('/')}/v2/models/{model}/infer"
        # Like tritonclient and perf_analyzer, ask for uncompressed answers (aiohttp would ask for gzip).
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(concurrency, 1)),
                                             timeout=aiohttp.ClientTimeout(total=60),
                                             skip_auto_headers=["Accept-Encoding"])

    async def __call__(self) -> bool | str:
        async with self.session.post(self.url, data=self.body, headers=self.headers) as response:
            content = await response.read()
            return True if response.status == 200 else f"HTTP {response.status}: {content[:200]!r}"

    async def close(self) -> None:
        await self.session.close()


class GrpcClient:
    """``inference.GRPCInferenceService/ModelInfer`` with one prebuilt request (raw tensor contents),
    serialised once, as the HTTP clients encode their body once: protobuf (upb) took about 60% of this
    client's time re-serialising a 4 MB request on every call, more than the server spent on it."""

    def __init__(self, target: str, model: str, tensors: dict[str, np.ndarray], application: str | None = None):
        import grpc
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelInferRequest(model_name=model)
        for name, array in tensors.items():
            request.inputs.add(name=name, datatype=v2_datatype(array.dtype), shape=list(array.shape))
            request.raw_input_contents.append(_raw(array))
        self.request = request.SerializeToString()
        self.metadata = (("application", application),) if application else None
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", -1),
                                                                  ("grpc.max_send_message_length", -1)])
        self.infer = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                              response_deserializer=service_pb2.ModelInferResponse.FromString)

    async def __call__(self) -> bool:
        await self.infer(self.request, metadata=self.metadata, timeout=60)
        return True

    async def close(self) -> None:
        await self.channel.close()


class HandleClient:
    """``infer_async`` of ``cluster.client``'s model client, numpy in and out (needs a Ray job joined to the
    cluster); ``listener=False``: the model deployment's Serve handle alone."""

    def __init__(self, deployment: str, application: str, tensors: dict[str, np.ndarray], listener: bool = True):
        from cluster.client import Client

        self.client = Client(application, listener=listener)
        self.model = self.client.model(deployment)
        self.tensors = tensors

    async def __call__(self) -> bool:
        await self.model.infer_async(self.tensors)
        return True

    async def close(self) -> None:
        if self.model.route is not None:
            self.model.route.close()
        self.client.close()


def _raw(array: np.ndarray) -> bytes:
    if array.dtype == object:
        from tritonclient.utils import serialize_byte_tensor

        return serialize_byte_tensor(array).item()
    return array.tobytes()


async def fetch_metadata(protocol: str, model: str, url: str, grpc_target: str, application: str | None,
                         grpc_application: str | None = None) -> dict[str, Any]:
    """The model's v2 metadata over the transport under test (handles: from the deployment)."""
    if protocol in ("handle", "serve-handle"):
        from ray import serve

        return await serve.get_deployment_handle(model, application).metadata.remote()
    if protocol == "grpc":
        import grpc
        from google.protobuf.json_format import MessageToDict
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        metadata = (("application", grpc_application),) if grpc_application else None
        async with grpc.aio.insecure_channel(grpc_target) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            reply = await stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model), metadata=metadata,
                                             timeout=30)
        return MessageToDict(reply, preserving_proto_field_name=True)
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(f"{url.rstrip('/')}/v2/models/{model}") as response:
            if response.status != 200:
                raise RuntimeError(f"GET /v2/models/{model}: HTTP {response.status}: {await response.text()}")
            return json.loads(await response.read())


def make_client(protocol: str, model: str, tensors, outputs, url: str, grpc_target: str,
                application: str | None, grpc_application: str | None, concurrency: int):
    if protocol in ("http-json", "http-binary"):
        return HttpClient(url, model, tensors, outputs, binary=protocol == "http-binary", concurrency=concurrency)
    if protocol == "grpc":
        return GrpcClient(grpc_target, model, tensors, grpc_application)
    if protocol in ("handle", "serve-handle"):
        return HandleClient(model, application, tensors, listener=protocol == "handle")
    raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
