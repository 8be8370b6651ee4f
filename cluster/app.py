"""The Serve application builder: one application per model repository.

``build`` lists the repository and returns the Ingress bound to one Model deployment per model,
named after the model. ``serve run``/``serve deploy`` call it through ``import_path: cluster.app:build``
with the typed :class:`AppArgs`; ``ric serve`` calls it directly.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray.serve import Application

from cluster.names import INGRESS_NAME, RESERVED_NAMES, STATISTICS_NAME, SYNC_NAME
from cluster.repository.examples import EXAMPLE, example_repository
from cluster.protocol.dataplane import SERVER_NAME
from cluster.protocol.forwarded_headers import compile_pattern
from cluster.protocol.http_server import ServerLimits
from cluster.protocol.ingress import Ingress, IngressOptions, Listeners
from cluster.protocol.restrictions import Restriction, check_unique
from cluster.repository.model_apps import deployment_options
from cluster.protocol.statistics import DEFAULT_TRACE_DIR, StatisticsCollector
from cluster.repository.sync import ModelStoreSync
from cluster.repository.stores import open_store
from deployments.config.model_config import ConfigError, ModelConfig
from deployments.config.messages import Autoscaling
from deployments.errors import without_paths
from deployments.operations.payloads import sink_for
from deployments.scheduling.limits import ServingLimits
from deployments.serving.model import Model
from ensembles.ensemble import Ensemble
from ensembles.graph import check_graph, is_ensemble, scheduling

logger = logging.getLogger(__name__)

#: The ingress only waits on model handles, so it may hold many requests at once.
INGRESS_MAX_ONGOING_REQUESTS = 1024


class AppArgs(BaseModel):
    """Arguments of the application builder (``args:`` in a Serve config file)."""

    model_config = ConfigDict(extra="forbid")

    repository: str = Field(
        default=EXAMPLE,
        description=f"Model repository: a folder, s3://bucket/prefix, or '{EXAMPLE}' (the generated example).",
    )
    models: list[str] | None = Field(default=None, description="Serve only these models (default: all).")
    server_name: str = Field(
        default=SERVER_NAME, min_length=1,
        description="The server's name in /v2 metadata (Triton's clients check for 'triton').",
    )
    trace_dir: str = Field(
        default=DEFAULT_TRACE_DIR, min_length=1,
        description="The folder, on the statistics collector's node, that trace files (Triton's trace_file "
                    "setting) are written in; clients may name files in it, nowhere else.",
    )
    payload_log: str = Field(
        default="",
        description="Where models with a payload_log block write their sampled requests and answers, as JSON "
                    "lines: a folder on each model replica's node, or s3://bucket/prefix (empty: nowhere).",
    )
    max_request_bytes: int = Field(default=64 * 2**20, gt=0, description="Largest request body accepted (413 above).")
    max_inflight_bytes: int = Field(
        default=1 << 30, gt=0,
        description="Memory the requests in flight in one ingress replica may hold (bodies, and JSON's decoding "
                    "at ~24x the body); a request that does not fit beside the others answers 503, one that "
                    "never fits 413.",
    )
    body_timeout_s: float = Field(
        default=60.0, gt=0,
        description="Seconds a request body may take to arrive in all, however it trickles; past it the "
                    "request answers 408 (the in-flight budget counts only the bytes that have arrived).",
    )
    max_uploaded_bytes: int = Field(
        default=256 * 2**20, gt=0,
        description="Bytes the files of models uploaded with repository loads may hold in all (kept once in "
                    "Ray's key-value store); a load past it answers 413.",
    )
    response_cache_bytes: int = Field(
        default=ServingLimits.response_cache_bytes, ge=0,
        description="Bytes each copy of a model with response_cache { enable: true } may keep in answers "
                    "(least recently used evicted first).",
    )
    max_ongoing_requests: int = Field(
        default=64, gt=0, description="Requests a model replica works on at once; bounds how full batches get."
    )
    execution_timeout_s: float = Field(
        default=ServingLimits.execution_timeout_s, gt=0,
        description="How long a request may wait in its model replica, queue and execution, before it answers "
                    "503; a batch running longer fails the replica's health check, so Serve replaces it (a "
                    "model's execution_timeout_s parameter overrides).",
    )
    max_queued_requests: int = Field(
        default=1024, gt=0,
        description="Requests that may wait for a model (its own deployment's queue, or a colocated copy's) "
                    "before more answer 503; a model's max_queue_size overrides.",
    )
    replica_num_cpus: float = Field(
        default=0.25, ge=0, description="CPUs Ray reserves per model replica (a model's num_cpus parameter overrides)."
    )
    ingress_replicas: int = Field(default=1, gt=0, description="Replicas of the HTTP ingress.")
    ingress_autoscaling: Autoscaling | None = Field(
        default=None,
        description="Autoscale the ingress replicas with the requests each holds, instead of ingress_replicas "
                    "(min_replicas at least 1: the ingress answers HTTP and gRPC). With colocate, models that "
                    "autoscale are then copied into the ingress too, and their copies follow its load.",
    )
    model_control_mode: Literal["none", "poll", "explicit"] = Field(
        default="poll",
        description="Triton's model control mode. poll: served models follow new versions and configs in the "
                    "store every poll_interval_s, and the repository API may not load or unload; none: no "
                    "changes after start; explicit: the repository API loads and unloads models (and uploads "
                    "model files, which may be Python code the server runs), and served models follow the "
                    "store as in poll (poll_interval_s: 0 for Triton's behaviour).",
    )
    restricted_apis: list[Restriction] = Field(
        default_factory=list,
        description="API groups that answer only requests carrying a header key and value, on HTTP and gRPC "
                    "(Triton's restricted APIs; gRPC clients send the key with the 'triton-grpc-protocol-' "
                    "prefix), e.g. [{apis: [model-repository], key: admin-key, value: ...}].",
    )
    http_header_forward_pattern: str = Field(
        default="", description="HTTP headers of inference requests whose names match this regular expression "
                                "reach the model as request parameters (Triton's --http-header-forward-pattern).")
    grpc_header_forward_pattern: str = Field(
        default="", description="The same for gRPC metadata (Triton's --grpc-header-forward-pattern).")
    poll_interval_s: float = Field(
        default=2.0, ge=0, description="How often the sync deployment reads the store for new versions; 0 never."
    )
    access_log: bool = Field(
        default=False, description="Serve's per-request access log lines for the ingress and models (off: ~3% of "
                                   "the ingress's time under load)."
    )
    host: str = Field(
        default="127.0.0.1", min_length=1,
        description="The address each ingress replica's own listeners bind (http_port, grpc_port).",
    )
    http_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port each ingress replica serves HTTP on itself, shared with the node's other ingress "
                    "replicas (SO_REUSEPORT): requests skip Serve's proxy and its hop to the ingress. 0: none "
                    "(HTTP through Serve's proxy only).",
    )
    grpc_port: int = Field(
        default=0, ge=0, le=65535,
        description="Port each ingress replica serves gRPC on itself, as http_port; 0: none (gRPC through "
                    "Serve's gRPC proxy only).",
    )
    header_timeout_s: float = Field(
        default=ServerLimits.header_timeout_s, gt=0,
        description="Seconds a request's headers may take to arrive on http_port (408 past it).",
    )
    idle_timeout_s: float = Field(
        default=ServerLimits.idle_timeout_s, gt=0,
        description="Seconds a keep-alive connection on http_port may wait for its next request.",
    )
    max_client_connections: int = Field(
        default=ServerLimits.max_client_connections, ge=0,
        description="Connections one client address may hold open to one ingress replica's http_port (429 "
                    "past it; 0: no bound).",
    )
    colocate: bool = Field(
        default=False,
        description="Also run every CPU model inside each ingress replica, so HTTP and gRPC requests skip the "
                    "ingress -> model hop (each ingress replica then holds a copy of those models).",
    )

    colocate_python: bool = Field(
        default=False,
        description="With colocate, run Python-backend models inside the ingress too, each version in a stub "
                    "process of its own (a crash or a batch past its execution timeout ends that process and "
                    "fails the requests in it; the next request starts it again). Decoupled Python models keep "
                    "to their own deployments.",
    )

    @field_validator("payload_log")
    @classmethod
    def _a_payload_destination(cls, destination: str) -> str:
        if destination:
            sink_for(destination)  # (raises ValueError for an s3:// address without a bucket)
        return destination

    @field_validator("http_header_forward_pattern", "grpc_header_forward_pattern")
    @classmethod
    def _a_regular_expression(cls, pattern: str) -> str:
        try:
            compile_pattern(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return pattern

    @field_validator("restricted_apis")
    @classmethod
    def _each_group_once(cls, restrictions: list[Restriction]) -> list[Restriction]:
        return check_unique(restrictions)

    @model_validator(mode="after")
    def _ingress_answers(self) -> "AppArgs":
        if self.ingress_autoscaling is not None and self.ingress_autoscaling.min_replicas < 1:
            raise ValueError("ingress_autoscaling.min_replicas must be at least 1: the ingress answers HTTP and gRPC")
        return self

    def serving_limits(self) -> ServingLimits:
        return ServingLimits(execution_timeout_s=self.execution_timeout_s, max_queued_requests=self.max_queued_requests,
                             max_ongoing_requests=self.max_ongoing_requests,
                             response_cache_bytes=self.response_cache_bytes, payload_log=self.payload_log)

    def polls(self) -> bool:
        """Whether the sync reads the store for new versions and configs while serving."""
        return self.model_control_mode != "none" and self.poll_interval_s > 0

    def ingress_initial_replicas(self) -> int:
        return self.ingress_replicas if self.ingress_autoscaling is None else self.ingress_autoscaling.min_replicas

    def colocates(self, config: ModelConfig) -> bool:
        """Whether a model also runs inside each ingress replica: CPU models, with colocate on, but not
        Python models unless colocate_python (then in stub processes: their code could otherwise crash or
        wedge the process, taking HTTP and gRPC down for every model; decoupled ones never), and not models
        that autoscale while the ingress does not (copies at a fixed count would take the HTTP/gRPC load away
        from the replicas the model's autoscaler counts) or that scale to zero (copies would keep them
        loaded), nor models with Triton's sequence batcher (every request of a sequence must reach the one
        replica that holds it, which only the model's own deployment, through its sequence router,
        guarantees). An ensemble colocated runs in each ingress replica too, calling the colocated copies of
        its steps in process."""
        if not self.colocate or config.gpus_per_replica():
            return False
        if config.backend_name == "python" and (not self.colocate_python or config.decoupled):
            return False
        if config.sequence_batching is not None:  # its sequences live in replicas the sequence router picks
            return False
        return config.autoscaling is None or (self.ingress_autoscaling is not None and not config.scales_to_zero)


def package_version() -> str:
    try:
        return version("ray-inference-cluster")
    except PackageNotFoundError:
        return "0+unknown"


def read_configs(store) -> tuple[dict[str, ModelConfig], dict[str, str]]:
    """Every model's config, and the reason for each model that cannot be served."""
    configs, failed = {}, {}
    for name in store.models():
        if name in RESERVED_NAMES:
            failed[name] = f"the name '{name}' is reserved by ric"
            continue
        try:
            config = store.config(name)
            if is_ensemble(config):
                scheduling(config, f"{name}/config")
        except Exception as exc:  # one broken model must not stop the others
            logger.warning("model '%s' is not served: %s", name, exc)
            failed[name] = without_paths(str(exc))
            continue
        for field in config.ignored():
            logger.warning("model '%s' is served without %s", name, field)
        configs[name] = config
    return configs, failed


def with_ensemble_steps(selected: set[str], configs: dict[str, ModelConfig]) -> set[str]:
    """A selection plus the step models of every selected ensemble, transitively."""
    selected, stack = set(selected), list(selected)
    while stack:
        config = configs.get(stack.pop())
        if config is not None and is_ensemble(config):
            for step in scheduling(config, config.name).step:
                if step.model_name not in selected:
                    selected.add(step.model_name)
                    stack.append(step.model_name)
    return selected


def bind_ensembles(ensembles: dict[str, ModelConfig], bound: dict, failed: dict[str, str], args: AppArgs,
                   statistics) -> None:
    """Bind each ensemble to its steps' handles, after the steps themselves (ensembles may nest)."""
    known = set(bound) | set(ensembles) | set(failed)
    waiting = {}
    for name, config in ensembles.items():
        try:
            check_graph(config, f"{name}/config", known)
            waiting[name] = config
        except ConfigError as exc:
            failed[name] = str(exc)
    while waiting:
        progress = False
        for name, config in list(waiting.items()):
            steps = {step.model_name for step in scheduling(config, name).step}
            broken = sorted(steps & failed.keys())
            if broken:
                failed[name] = f"step models {broken} are not available"
            elif steps <= bound.keys():
                handles = {step: bound[step] for step in steps}
                bound[name] = Ensemble.options(**deployment_options(config, args)).bind(config, handles, statistics)
            else:
                continue
            del waiting[name]
            progress = True
        if not progress:
            for name, config in waiting.items():
                missing = sorted({s.model_name for s in scheduling(config, name).step} - bound.keys())
                failed[name] = f"steps {missing} form a cycle of ensembles"
            return


def select_models(args: AppArgs) -> tuple[object, dict[str, ModelConfig], dict[str, str]]:
    """The repository's store, the configs of the models the application serves, and the reason for each
    selected model that cannot be served."""
    root = example_repository() if args.repository == EXAMPLE else args.repository
    store = open_store(str(root))
    configs, failed = read_configs(store)
    if args.models is not None:
        missing = sorted(set(args.models) - set(configs) - set(failed))
        if missing:
            raise ValueError(f"models {missing} are not in the repository {store!r}")
        selected = with_ensemble_steps(set(args.models), configs)
        configs = {n: c for n, c in configs.items() if n in selected}
        failed = {n: r for n, r in failed.items() if n in selected}
    return store, configs, failed


@dataclass(frozen=True)
class Reservation:
    """What one deployment of the application asks Ray for when it starts."""

    deployment: str
    replicas: int
    num_cpus: float  # per replica
    num_gpus: float  # per replica


def reservations(args: AppArgs) -> list[Reservation]:
    """Every deployment the application starts with, and its reservation (without deploying anything)."""
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    _, configs, _ = select_models(args)
    found = [Reservation(INGRESS_NAME, args.ingress_initial_replicas(), args.replica_num_cpus, 0.0)]
    for name, config in sorted(configs.items()):
        options = deployment_options(config, args)
        actor = options["ray_actor_options"]
        found.append(Reservation(name, config.replicas(), actor["num_cpus"], actor.get("num_gpus", 0.0)))
    return found


def listeners(args: AppArgs) -> Listeners | None:
    """The ingress replicas' own listeners, if the args ask for any."""
    if not args.http_port and not args.grpc_port:
        return None
    limits = ServerLimits(header_timeout_s=args.header_timeout_s, idle_timeout_s=args.idle_timeout_s,
                          max_client_connections=args.max_client_connections)
    return Listeners(args.host, args.http_port, args.grpc_port, limits)


def build(args: AppArgs) -> Application:
    """Build the application for a repository: the Ingress and one Model deployment per model."""
    if isinstance(args, dict):
        args = AppArgs.model_validate(args)
    store, configs, failed = select_models(args)
    statistics = StatisticsCollector.options(name=STATISTICS_NAME).bind(args.trace_dir)
    plain = {name: config for name, config in configs.items() if not is_ensemble(config)}
    steps = frozenset(step.model_name for config in configs.values() if is_ensemble(config)
                      for step in scheduling(config, config.name).step)
    sync = ModelStoreSync.options(name=SYNC_NAME).bind(store, plain, args, statistics, steps)
    models = {
        name: Model.options(**deployment_options(config, args)).bind(config, store, statistics, sync,
                                                                     args.serving_limits(), INGRESS_NAME)
        for name, config in plain.items()
    }
    bind_ensembles({n: c for n, c in configs.items() if is_ensemble(c)}, models, failed, args, statistics)
    on_demand = frozenset(name for name, config in configs.items() if config.scales_to_zero)
    options = IngressOptions(version=package_version(), server_name=args.server_name,
                             max_request_bytes=args.max_request_bytes,
                             on_demand=on_demand, model_control_mode=args.model_control_mode,
                             restricted_apis=tuple(args.restricted_apis),
                             header_forward_patterns=(args.http_header_forward_pattern,
                                                      args.grpc_header_forward_pattern),
                             serving_limits=args.serving_limits(), max_inflight_bytes=args.max_inflight_bytes,
                             body_timeout_s=args.body_timeout_s, listeners=listeners(args))
    colocated = {name: (config, store) for name, config in plain.items() if args.colocates(config)}
    ensembles = {name: configs[name] for name in models if is_ensemble(configs[name]) and args.colocates(configs[name])}
    if args.ingress_autoscaling is None:
        scaling = {"num_replicas": args.ingress_replicas}
    else:
        scaling = {"autoscaling_config": args.ingress_autoscaling.serve_config()}
    return Ingress.options(
        name=INGRESS_NAME,
        **scaling,
        max_ongoing_requests=INGRESS_MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": args.replica_num_cpus},
        logging_config={"enable_access_log": args.access_log},
    ).bind(models, failed, options, statistics, sync, colocated, ensembles)
