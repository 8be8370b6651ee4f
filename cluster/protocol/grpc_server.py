"""The Ingress replica's own gRPC listener: ``inference.GRPCInferenceService`` served by grpc.aio in this
process, beside the node's other ingress replicas on the same port (``SO_REUSEPORT``).

The RPCs are the Ingress's own methods (``GrpcInferenceService``), the ones Serve's gRPC proxy calls; here
grpc.aio calls them with no proxy and no handle hop. An error such a method raises becomes the status it
set (grpc.aio would otherwise answer UNKNOWN), and an inference's answer is written as it was encoded
(``EncodedInferResponse``, which protobuf's own serialiser would not take).

The listener keeps the HTTP listener's bounds where HTTP/2 has them (``ServerLimits``): a connection that
has not sent its HTTP/2 preface within the header timeout is closed, one with no RPC for the idle timeout
is sent GOAWAY, and each connection carries at most ``STREAMS_PER_CONNECTION`` RPCs at once (advertised in
the server's SETTINGS, so a client queues more on its side instead of failing them).
"""

from __future__ import annotations

import grpc
from tritonclient.grpc import service_pb2 as pb

from cluster.protocol.http_server import ServerLimits
from deployments.errors import GRPC_STATUS, InferenceError

SERVICE = "inference.GRPCInferenceService"
#: The RPCs whose requests and responses are streams (the rest are unary).
STREAMING = frozenset({"ModelStreamInfer"})
#: RPCs one connection may have in flight at once (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS; gRPC's
#: default is none).
STREAMS_PER_CONNECTION = 256


def _serialize(message) -> bytes:
    return message.SerializeToString()


def _unary(method):
    async def call(request, context: grpc.aio.ServicerContext):
        try:
            return await method(request, context)
        except InferenceError as error:
            await context.abort(grpc.StatusCode[GRPC_STATUS[error.code]], error.message)

    return call


def handlers(servicer) -> grpc.GenericRpcHandler:
    """The service's RPCs, each calling ``servicer``'s method of the same name."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {}
    for rpc in service.methods:
        request_type = getattr(pb, rpc.input_type.name)
        method = getattr(servicer, rpc.name)
        if rpc.name in STREAMING:
            methods[rpc.name] = grpc.stream_stream_rpc_method_handler(
                method, request_deserializer=request_type.FromString, response_serializer=_serialize)
        else:
            methods[rpc.name] = grpc.unary_unary_rpc_method_handler(
                _unary(method), request_deserializer=request_type.FromString, response_serializer=_serialize)
    return grpc.method_handlers_generic_handler(SERVICE, methods)


async def start_grpc_server(servicer, host: str, port: int, max_request_bytes: int,
                            limits: ServerLimits = ServerLimits()) -> grpc.aio.Server:
    """A started grpc.aio server on ``host:port`` that refuses messages over ``max_request_bytes`` unread,
    with ``limits``' header and idle timeouts."""
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", max_request_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION),
        ("grpc.server_handshake_timeout_ms", int(limits.header_timeout_s * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
    ])
    server.add_generic_rpc_handlers((handlers(servicer),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    return server
