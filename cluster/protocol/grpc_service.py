"""``inference.GRPCInferenceService`` on the Ingress, served by Ray Serve's gRPC proxy.

Serve calls the Ingress method named after each RPC with the request message. Each method checks its API
group's restriction, decodes, calls the same data plane as HTTP, encodes; an error sets the gRPC status from
the one error table.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from contextvars import ContextVar
from typing import AsyncIterator

import grpc
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from cluster.protocol import grpc_codec
from cluster.protocol.budget import ByteBudget, needed_bytes, off_loop_if_large
from cluster.protocol.dataplane import DataPlane
from cluster.protocol.forwarded_headers import forward
from cluster.protocol.restrictions import ApiGroup, Restrictions
from cluster.protocol.shared_memory import NO_CUDA
from deployments.errors import GRPC_STATUS, ErrorCode, InferenceError, invalid, not_found
from deployments.scheduling.sequences import sequence_key

logger = logging.getLogger(__name__)

#: The servicer function Serve's gRPC proxy registers (``grpc_options.grpc_servicer_functions``).
SERVICER_FUNCTION = "cluster.protocol.grpc_service.add_servicer_to_server"


def register_message_modules() -> None:
    """Make tritonclient's generated message classes picklable.

    Their ``__module__`` is the proto file's (``grpc_service_pb2``), which pickle cannot import, and Serve
    pickles each request and response between the gRPC proxy and the Ingress replica.
    """
    sys.modules.setdefault("grpc_service_pb2", pb)
    sys.modules.setdefault("model_config_pb2", model_config_pb2)


def add_servicer_to_server(servicer, server) -> None:
    """Tritonclient's ``add_GRPCInferenceServiceServicer_to_server``, run in Serve's gRPC proxy."""
    register_message_modules()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


#: The metadata of the RPC being answered (its header forwarding reads it).
_METADATA: ContextVar[dict[str, str]] = ContextVar("ric_grpc_metadata", default={})


def rpc(group: ApiGroup):
    """An RPC method of API group ``group`` (checked against the restricted APIs first), any failure of
    which becomes its gRPC status and a clear message."""

    def decorate(method):
        async def wrapper(self, request, grpc_context):
            self.ongoing_rpcs += 1
            try:
                metadata = dict(grpc_context.invocation_metadata())
                self.restrictions.check_grpc(group, metadata)
                _METADATA.set(metadata)
                return await method(self, request)
            except Exception as exc:
                error = InferenceError.from_exception(exc)
                if error.code == ErrorCode.INTERNAL:
                    logger.warning("gRPC %s failed: %r", method.__name__, exc)
                grpc_context.set_code(grpc.StatusCode[GRPC_STATUS[error.code]])
                grpc_context.set_details(error.message)
                raise error from None
            finally:
                self.ongoing_rpcs -= 1

        # Not functools.wraps: Serve reads the signature to decide whether to pass grpc_context.
        wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = method.__name__, method.__qualname__, method.__doc__
        return wrapper

    return decorate


class GrpcInferenceService:
    """The RPCs of Triton's GRPCInferenceService; mixed into the Ingress, which provides ``plane``."""

    plane: DataPlane
    #: The metadata of inference requests that reach the model (forwarded_headers.py; None: none).
    grpc_forward: re.Pattern | None = None
    max_request_bytes: int
    restrictions: Restrictions
    budget: ByteBudget
    #: RPCs being answered now, streams included (what the ingress's autoscaler counts).
    ongoing_rpcs: int = 0

    @rpc("health")
    async def ServerLive(self, request: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc("health")
    async def ServerReady(self, request: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=await self.plane.server_ready())

    @rpc("metadata")
    async def ServerMetadata(self, request: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return grpc_codec.to_message(self.plane.server_metadata(), pb.ServerMetadataResponse)

    @rpc("health")
    async def ModelReady(self, request: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        try:
            await self.plane.model_metadata(request.name, request.version or None)
        except InferenceError as error:
            if error.code != ErrorCode.UNAVAILABLE:
                raise
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @rpc("metadata")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        metadata = await self.plane.model_metadata(request.name, request.version or None)
        return grpc_codec.to_message(metadata, pb.ModelMetadataResponse)

    @rpc("model-config")
    async def ModelConfig(self, request: pb.ModelConfigRequest) -> pb.ModelConfigResponse:
        config = await self.plane.model_config(request.name)
        return grpc_codec.to_message({"config": config}, pb.ModelConfigResponse)

    def _check_size(self, request, size: int | None = None) -> int:
        """The message's size (``size`` when the caller knows it); over the limit it is refused (Serve's
        gRPC proxy refuses it unread when ``ric serve`` set its limit; a proxy started otherwise has read
        it already)."""
        size = request.ByteSize() if size is None else size
        if size > self.max_request_bytes:
            raise InferenceError(ErrorCode.TOO_LARGE,
                                 f"request of {size} bytes exceeds the limit of {self.max_request_bytes}")
        return size

    @rpc("inference")
    async def ModelInfer(self, request: pb.ModelInferRequest) -> grpc_codec.EncodedInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(self, request_stream, grpc_context):
        """Triton's bidirectional stream: each request in it answers its responses (one; a decoupled model's
        any number) or an error message in the stream, which goes on, in the order they come; requests of one
        sequence run one after the other, in the order sent, the rest at once. With the request parameter
        ``triton_enable_empty_final_response`` each request ends with an empty response whose
        ``triton_final_response`` parameter is true (false on the others), as Triton."""
        try:
            metadata = dict(grpc_context.invocation_metadata())
            self.restrictions.check_grpc("inference", metadata)
            _METADATA.set(metadata)  # (the tasks answering the stream's requests start with it)
        except InferenceError as error:
            grpc_context.set_code(grpc.StatusCode[GRPC_STATUS[error.code]])
            grpc_context.set_details(error.message)
            return
        answers: asyncio.Queue = asyncio.Queue()

        async def answer(request: pb.ModelInferRequest, after: asyncio.Task | None) -> None:
            if after is not None:
                await asyncio.wait([after])
            flag_final = bool(grpc_codec.plain_parameters(request.parameters).get("triton_enable_empty_final_response"))
            bare = lambda: pb.ModelInferResponse(  # noqa: E731
                model_name=request.model_name, model_version=request.model_version, id=request.id)
            try:
                async for response in self._stream(request):
                    if flag_final:
                        response.parameters["triton_final_response"].bool_param = False
                    await answers.put(pb.ModelStreamInferResponse(infer_response=response))
                if flag_final:
                    final = bare()
                    final.parameters["triton_final_response"].bool_param = True
                    await answers.put(pb.ModelStreamInferResponse(infer_response=final))
            except Exception as exc:
                error = InferenceError.from_exception(exc)
                if error.code == ErrorCode.INTERNAL:
                    logger.warning("gRPC ModelStreamInfer request failed: %r", exc)
                await answers.put(pb.ModelStreamInferResponse(error_message=error.message, infer_response=bare()))

        async def read() -> None:
            running, last_of_sequence = [], {}
            try:
                async for request in request_stream:
                    sequence = sequence_key(grpc_codec.plain_parameters(request.parameters))
                    task = asyncio.ensure_future(answer(request, last_of_sequence.get(sequence)))
                    if sequence is not None:
                        last_of_sequence[sequence] = task
                    running.append(task)
                await asyncio.gather(*running)
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        self.ongoing_rpcs += 1
        try:
            while (response := await answers.get()) is not None:
                yield response
        finally:
            self.ongoing_rpcs -= 1
            reader.cancel()

    def _raw_and_size(self, request: pb.ModelInferRequest) -> tuple[list[bytes], int]:
        """The request's raw tensors, each taken out of the message once (protobuf copies it into a bytes
        object on every access), and the size to check and reserve: their bytes, or, without any, the
        message's. (The message's ByteSize took 7 ms on 4 MB of raw contents with upb.)"""
        raw = list(request.raw_input_contents)
        size = sum(map(len, raw)) + len(request.inputs) * 256 if raw else None
        return raw, self._check_size(request, size)

    async def _infer(self, request: pb.ModelInferRequest) -> grpc_codec.EncodedInferResponse:
        self.plane.handle(request.model_name)  # unknown or failed models answer before decoding
        raw, size = self._raw_and_size(request)
        with self.budget.reserve(needed_bytes(size, binary=True)):
            decoded = await off_loop_if_large(size, grpc_codec.decode_infer_request, request, raw)
            forward(decoded.parameters, _METADATA.get(), self.grpc_forward)
            version, outputs = await self.plane.infer_request(request.model_name, request.model_version or None,
                                                              decoded)
            return grpc_codec.encode_infer_response(request.model_name, version, outputs, decoded)

    async def _stream(self, request: pb.ModelInferRequest) -> AsyncIterator[pb.ModelInferResponse]:
        """A request's responses: a decoupled model's any number, any other model's one."""
        self.plane.handle(request.model_name)
        raw, size = self._raw_and_size(request)
        with self.budget.reserve(needed_bytes(size, binary=True)):
            decoded = await off_loop_if_large(size, grpc_codec.decode_infer_request, request, raw)
            forward(decoded.parameters, _METADATA.get(), self.grpc_forward)
            async for version, outputs in self.plane.stream_request(request.model_name, request.model_version or None,
                                                                    decoded):
                yield grpc_codec.encode_infer_response(request.model_name, version, outputs, decoded).message()

    @rpc("shared-memory")
    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest
                                       ) -> pb.SystemSharedMemoryStatusResponse:
        regions = await self.plane.shared_memory.status(request.name or None)
        return grpc_codec.to_message({"regions": {r["name"]: r for r in regions}}, pb.SystemSharedMemoryStatusResponse)

    @rpc("shared-memory")
    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest
                                         ) -> pb.SystemSharedMemoryRegisterResponse:
        await self.plane.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @rpc("shared-memory")
    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest
                                           ) -> pb.SystemSharedMemoryUnregisterResponse:
        await self.plane.shared_memory.unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    @rpc("shared-memory")
    async def CudaSharedMemoryStatus(self, request: pb.CudaSharedMemoryStatusRequest
                                     ) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            raise not_found(f"Unable to find cuda shared memory region: '{request.name}'")
        return pb.CudaSharedMemoryStatusResponse()

    @rpc("shared-memory")
    async def CudaSharedMemoryRegister(self, request: pb.CudaSharedMemoryRegisterRequest
                                       ) -> pb.CudaSharedMemoryRegisterResponse:
        raise invalid(NO_CUDA)

    @rpc("shared-memory")
    async def CudaSharedMemoryUnregister(self, request: pb.CudaSharedMemoryUnregisterRequest
                                         ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()

    @rpc("statistics")
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest) -> pb.ModelStatisticsResponse:
        stats = await self.plane.statistics(request.name or None, request.version or None)
        return grpc_codec.to_message(stats, pb.ModelStatisticsResponse)

    @rpc("logging")
    async def LogSettings(self, request: pb.LogSettingsRequest) -> pb.LogSettingsResponse:
        changes = {name: getattr(value, value.WhichOneof("parameter_choice"))
                   for name, value in request.settings.items() if value.WhichOneof("parameter_choice")}
        settings = await self.plane.log_settings(changes)
        response = pb.LogSettingsResponse()
        for name, value in settings.items():
            kind = "bool_param" if isinstance(value, bool) else "uint32_param" if isinstance(value, int) else "string_param"
            setattr(response.settings[name], kind, value)
        return response

    @rpc("trace")
    async def TraceSetting(self, request: pb.TraceSettingRequest) -> pb.TraceSettingResponse:
        # A setting with no value clears it (a model's override, or a global one back to its default).
        changes = {name: (list(value.value) if name == "trace_level" else value.value[0]) if value.value else None
                   for name, value in request.settings.items()}
        settings = await self.plane.trace_settings(request.model_name or None, changes)
        response = pb.TraceSettingResponse()
        for name, value in settings.items():
            response.settings[name].value.extend(value if isinstance(value, list) else [value])
        return response

    @rpc("model-repository")
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        self._check_size(request)  # a load may carry model files
        await self.plane.set_loaded(request.model_name, True, _control_parameters(request))
        return pb.RepositoryModelLoadResponse()

    @rpc("model-repository")
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        await self.plane.set_loaded(request.model_name, False, _control_parameters(request))
        return pb.RepositoryModelUnloadResponse()

    @rpc("model-repository")
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        rows = await self.plane.repository_index(ready_only=request.ready)
        return grpc_codec.to_message({"models": rows}, pb.RepositoryIndexResponse)


def _control_parameters(request) -> dict:
    """A repository load's or unload's parameters as plain values (an unset one as an empty string)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in request.parameters.items()}
