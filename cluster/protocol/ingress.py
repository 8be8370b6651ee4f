"""The Ingress deployment: the KServe v2 / Triton HTTP routes and the gRPC service over one data plane.

Requests reach it two ways. Its own listeners (``IngressOptions.listeners``): each replica runs an HTTP/1.1
server (``http_server``) and a grpc.aio server (``grpc_server``) on the advertised ports, shared with the
node's other ingress replicas through ``SO_REUSEPORT``, so a request goes from the socket to the routes in
this process. And Serve's proxies (``__call__`` and the gRPC methods by name), the compatibility path for
``serve deploy`` and KubeRay. The model handles are passed in by the app builder; models it colocates run
inside this replica; models loaded later are followed from the sync deployment.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cluster.protocol.budget import ByteBudget
from cluster.protocol.dataplane import SERVER_NAME, DataPlane
from cluster.protocol.grpc_server import start_grpc_server
from cluster.protocol.forwarded_headers import compile_pattern
from cluster.protocol.grpc_service import GrpcInferenceService, register_message_modules
from cluster.protocol.http_api import HttpApi
from cluster.protocol.http_server import HttpServer, ServerLimits
from cluster.protocol.restrictions import Restriction, Restrictions
from cluster.protocol.shared_memory import SharedMemory
from deployments.observability import settings_follower
from deployments.config.model_config import ModelConfig
from deployments.scheduling.limits import ServingLimits
from deployments.serving.model import ModelService
from deployments.serving.runner import VersionSource
from deployments.serving.served import LocalHandle
from ensembles.ensemble import colocated_ensemble
from ensembles.graph import scheduling

logger = logging.getLogger(__name__)

#: The name of the metric Serve's default autoscaling policy sums over a deployment's replicas.
RUNNING_REQUESTS = "running_requests"


@dataclass(frozen=True)
class Listeners:
    """Where each ingress replica listens itself (AppArgs.host, http_port, grpc_port); a port of 0: none."""

    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    limits: ServerLimits = ServerLimits()


@dataclass(frozen=True)
class IngressOptions:
    """Limits and names the Ingress needs from the app builder."""

    version: str
    max_request_bytes: int
    #: The name /v2 metadata gives (AppArgs.server_name).
    server_name: str = SERVER_NAME
    #: Models that scale to zero replicas when idle: readiness, index and statistics leave them asleep.
    on_demand: frozenset[str] = frozenset()
    #: Triton's model control mode: only ``explicit`` lets the repository API load and unload models.
    model_control_mode: str = "explicit"
    #: API groups that answer only requests with a given header (Triton's restricted APIs).
    restricted_apis: tuple[Restriction, ...] = ()
    #: The HTTP and gRPC header forward patterns (AppArgs.http_/grpc_header_forward_pattern; "": none).
    header_forward_patterns: tuple[str, str] = ("", "")
    #: The colocated models' bounds where their configs set none.
    serving_limits: ServingLimits = ServingLimits()
    #: Bytes the requests in flight in one Ingress replica may hold (AppArgs.max_inflight_bytes).
    max_inflight_bytes: int = 1 << 30
    #: Seconds a request's body may take to arrive in all (AppArgs.body_timeout_s).
    body_timeout_s: float = 60.0
    #: The replica's own listeners; None: requests come through Serve's proxies only.
    listeners: Listeners | None = None


@serve.deployment
class Ingress(GrpcInferenceService):
    """Routes v2 HTTP and gRPC requests to the model deployments."""

    async def __init__(
        self,
        models: dict[str, DeploymentHandle],
        failed: dict[str, str],
        options: IngressOptions,
        statistics: DeploymentHandle,
        sync: DeploymentHandle | None = None,
        colocated: dict[str, tuple[ModelConfig, VersionSource]] | None = None,
        colocated_ensembles: dict[str, ModelConfig] | None = None,
    ):
        """``colocated`` models are also served inside this replica: HTTP and gRPC requests for them skip
        the hop to their deployment, whose replicas still serve handles and ensembles (Python models in stub
        processes, so that their code cannot take the replica down). So are
        ``colocated_ensembles`` (in the order given: a nested ensemble before the one using it), whose
        steps call the models colocated here in process and the others through their deployments."""
        register_message_modules()
        settings_follower.follow(statistics)
        self.colocated = [ModelService(config, source, statistics, sync, options.serving_limits, isolated=True,
                                       handles=self._handle, control=self.set_loaded)
                          for config, source in (colocated or {}).values()]
        local = {service.runner.name: LocalHandle(service) for service in self.colocated}
        for name, config in (colocated_ensembles or {}).items():
            steps = {step.model_name: local.get(step.model_name, models[step.model_name])
                     for step in scheduling(config, name).step}
            local[name] = LocalHandle(await colocated_ensemble(config, steps, statistics))
        shared_memory = SharedMemory(serve.get_replica_context().app_name, ray.get_runtime_context().get_node_id())
        self.plane = DataPlane({**models, **local}, failed, options, statistics, sync, shared_memory)
        self._follower = asyncio.get_running_loop().create_task(self.plane.follow_models()) if sync else None
        self.max_request_bytes = options.max_request_bytes
        self.restrictions = Restrictions(list(options.restricted_apis))
        self.budget = ByteBudget(options.max_inflight_bytes)
        http_forward, self.grpc_forward = map(compile_pattern, options.header_forward_patterns)
        self.http = HttpApi(self.plane, self.restrictions, self.budget, options.max_request_bytes,
                            options.body_timeout_s, http_forward)
        self.listening, self.listeners, self.server_name = None, options.listeners, options.server_name
        if options.listeners is not None:
            self.listening = await Listening.start(options.listeners, self.http.respond, self,
                                                   options.max_request_bytes)

    async def _handle(self, model: str):
        """The handle a colocated model's BLS call to ``model`` takes: in process where this replica serves
        it, else its deployment's (the data plane's, which knows every model of the application)."""
        return self.plane.handle(model)

    async def set_loaded(self, model: str, loaded: bool, parameters: dict | None = None) -> None:
        """The repository API's load / unload (a model's ``pb_utils.load_model`` / ``unload_model`` come here)."""
        await self.plane.set_loaded(model, loaded, parameters)

    def listener(self) -> dict | None:
        """Where ``cluster.client`` in another Ray job sends this application's requests as an HTTP client
        (cluster/listener_client.py): the replicas' own HTTP listener, the largest request it takes and the
        name ``GET /v2`` gives. None where the replica has no listener of its own, or where inference needs a
        restricted API's header (the client keeps to the handles rather than carry a secret to a port)."""
        if self.listening is None or self.listening.http is None or "inference" in self.restrictions.by_group:
            return None
        return {"host": self.listeners.host, "port": self.listening.http.port,
                "max_request_bytes": self.max_request_bytes, "server_name": self.server_name,
                "idle_timeout_s": self.listeners.limits.idle_timeout_s}

    def check_health(self) -> None:
        """Serve's health check: a colocated model wedged past its execution timeout fails this replica."""
        for service in self.colocated:
            service.check_health()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What Serve's autoscaler counts for this replica: every request it is answering. Serve sees only
        those its proxies hand over; the replica's own listeners' it learns here."""
        return {RUNNING_REQUESTS: float(self.http.ongoing + self.ongoing_rpcs)}

    async def __call__(self, request: Request) -> Response:
        """Serve's HTTP proxy's way in (``serve deploy``, KubeRay, ``ric serve --ingress haproxy``): the same
        routes as the replica's own listener."""
        reply = await self.http.respond(ProxiedRequest(request))
        if reply.events is not None:
            return StreamingResponse(reply.events, status_code=reply.status, media_type=reply.media_type,
                                     headers=reply.headers)
        return Response(bytes(reply.body), status_code=reply.status, media_type=reply.media_type,
                        headers=reply.headers)

    async def __del__(self):
        """Serve stops the replica: its listeners stop accepting (the node's other ingress replicas take new
        connections) and finish what they hold."""
        if self.listening is not None:
            await self.listening.close()


class ProxiedRequest:
    """A request from Serve's HTTP proxy as the routes read one."""

    __slots__ = ("method", "path", "headers", "stream")

    def __init__(self, request: Request):
        self.method, self.path, self.headers, self.stream = request.method, request.url.path, request.headers, request.stream


class Listening:
    """The replica's own HTTP and gRPC listeners (IngressOptions.listeners)."""

    def __init__(self, http: HttpServer | None, grpc_server):
        self.http, self.grpc = http, grpc_server

    @classmethod
    async def start(cls, listeners: Listeners, respond, servicer, max_request_bytes: int) -> "Listening":
        http = None
        if listeners.http_port:
            http = HttpServer(respond, listeners.limits)
            await http.start(listeners.host, listeners.http_port)
        grpc_server = None
        if listeners.grpc_port:
            grpc_server = await start_grpc_server(servicer, listeners.host, listeners.grpc_port, max_request_bytes,
                                                  listeners.limits)
        return cls(http, grpc_server)

    async def close(self, grace_s: float = 5.0) -> None:
        if self.grpc is not None:
            await self.grpc.stop(grace_s)
        if self.http is not None:
            await self.http.close(grace_s)
