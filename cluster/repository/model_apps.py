"""Models loaded after the application was built run as Serve applications of their own.

Serve cannot add a deployment to a running application without rebuilding it, and on Ray 2.60 a rebuild
replaces every replica of the application (the builder's arguments are hashed into every deployment's
version; docs/architecture.md). So a repository load of a model the application was not built with deploys
that model as an application of its own, ``<app>-model-<model>``, with no HTTP route: the proxies' route
table is unchanged (Serve's gRPC proxy still needs no ``application`` metadata, as exactly one application
has a route), the other models are not touched, and the Ingress reaches the new model through a handle.
Unloading it deletes that application, which frees its replicas and their Ray resources.

A model the application was built with is scaled to zero replicas on unload and back on load, through
Serve's external scaler API (the application needs ``external_scaler_enabled``), so its resources are
freed too.

The functions that talk to the Serve controller block; the sync deployment calls them on a thread. The
``async`` ones wait (boundedly) for Serve to get there, calling the others on a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray import serve
from ray.serve import Application
# Serve's external scaler API has no Python wrapper, only the dashboard's REST route, which calls the
# controller with these; ``scale`` and ``replicas`` call it the same way.
from ray.serve._private.common import DeploymentID
from ray.serve.config import RequestRouterConfig
from ray.serve.context import _get_global_client
from ray.serve.handle import DeploymentHandle

from cluster.names import INGRESS_NAME, model_app_name
from deployments.config.model_config import ModelConfig
from deployments.errors import InferenceError, invalid, unavailable
from deployments.scheduling.limits import max_queued
from deployments.serving.model import Model
from deployments.scheduling.sequence_router import ROUTER_CLASS
from ensembles.ensemble import Ensemble

logger = logging.getLogger(__name__)

#: How often a deployment's progress is read while a load waits for it.
STATUS_INTERVAL_S = 0.5
#: How long a load waits for a model's own application to start, and an unload for it to go.
DEPLOY_TIMEOUT_S = 120.0


#: Serve's default health check period, shortened for models with a shorter execution timeout.
HEALTH_CHECK_PERIOD_S = 10.0


def deployment_options(config: ModelConfig, args: Any) -> dict:
    """Serve options for a model (``args``: the builder's AppArgs): replicas from instance groups or an
    autoscaling config, GPUs per replica, queue limit."""
    actor_options: dict = {"num_cpus": float(config.parameter("num_cpus") or args.replica_num_cpus)}
    gpus = config.gpus_per_replica()
    if gpus:
        actor_options["num_gpus"] = gpus
    timeout = float(config.parameter("execution_timeout_s") or args.execution_timeout_s)  # as ModelService
    options = {
        "name": config.name,
        "ray_actor_options": actor_options,
        "max_ongoing_requests": args.max_ongoing_requests,
        "logging_config": {"enable_access_log": args.access_log},
        # A replica wedged past its execution timeout fails its health check (three in a row replace it).
        "health_check_period_s": max(1.0, min(HEALTH_CHECK_PERIOD_S, timeout)),
    }
    if config.autoscaling is not None:
        options["autoscaling_config"] = config.autoscaling.serve_config()
    else:
        options["num_replicas"] = config.replicas()
    options["max_queued_requests"] = max_queued(config, args.serving_limits())
    if config.sequence_batching is not None:  # each sequence's requests to the replica that holds it
        options["request_router_config"] = RequestRouterConfig(request_router_class=ROUTER_CLASS)
    return options


def model_application(config: ModelConfig, store: Any, args: Any, statistics: Any, sync: Any) -> Application:
    return Model.options(**deployment_options(config, args)).bind(config, store, statistics, sync,
                                                                  args.serving_limits(), INGRESS_NAME)


def ensemble_application(config: ModelConfig, steps: dict[str, DeploymentHandle], args: Any,
                         statistics: Any) -> Application:
    return Ensemble.options(**deployment_options(config, args)).bind(config, steps, statistics)


def deploy(parent: str, model: str, application: Application) -> str:
    """Start deploying a model as its own application (without waiting for it); returns the app's name."""
    name = model_app_name(parent, model)
    serve._run(application, _blocking=False, name=name, route_prefix=None)
    return name


def deployments(app: str) -> set[str]:
    """The deployments of an application (none when there is no such application)."""
    status = serve.status().applications.get(app)
    return set(status.deployments) if status else set()


def state(name: str) -> tuple[str, str]:
    """An application's status and message; ``("NOT_STARTED", "")`` when there is none."""
    app = serve.status().applications.get(name)
    return (app.status.value, app.message) if app else ("NOT_STARTED", "")


def deployed(parent: str) -> dict[str, str]:
    """The models deployed as applications of their own beside ``parent``: model -> application name."""
    prefix = model_app_name(parent, "")
    return {name.removeprefix(prefix): name for name in serve.status().applications if name.startswith(prefix)}


def scale(app: str, deployment: str, replicas: int) -> bool:
    """Set a deployment's replica count (Serve's external scaler API, what its REST ``.../scale`` route
    calls); False when the application was deployed without ``external_scaler_enabled``."""
    controller = _get_global_client()._controller
    try:
        ray.get(controller.update_deployment_replicas.remote(DeploymentID(name=deployment, app_name=app), replicas))
    except ray.exceptions.RayTaskError as exc:
        if type(exc.cause).__name__ == "ExternalScalerDisabledError":
            return False
        raise
    return True


def replicas(app: str) -> dict[str, tuple[int, int]]:
    """Each deployment of an application: (target replicas, replicas that exist in any state)."""
    details = _get_global_client().get_serve_details()
    deployments = details.get("applications", {}).get(app, {}).get("deployments", {})
    return {name: (d["target_num_replicas"], len(d.get("replicas", []))) for name, d in deployments.items()}


def delete(name: str) -> None:
    serve.delete(name, _blocking=False)


def load_failure(model: str, index: list[dict[str, str]]) -> InferenceError:
    """The error of a load after which no version of the model is ready, from the model's index rows."""
    reasons = "; ".join(f"version {row['version']}: {row['reason']}" for row in index)
    return invalid(f"failed to load '{model}': {reasons or 'no version in the repository'}")


async def scale_and_wait(app: str, deployment: str, count: int) -> bool:
    """Set a built model's replica count and wait (boundedly) for it; False when the application does not
    allow it (deployed without ``external_scaler_enabled``: the replicas stay, holding no model)."""
    if not await asyncio.to_thread(scale, app, deployment, count):
        logger.info("model '%s' keeps its replicas: the application has no external_scaler_enabled", deployment)
        return False
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while time.monotonic() < deadline:
        if (await asyncio.to_thread(replicas, app)).get(deployment) == (count, count):
            break
        await asyncio.sleep(STATUS_INTERVAL_S)
    return True


async def until_serving(app: str, model: str) -> None:
    """Wait until a model's own application runs with a version ready; raise why it does not."""
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while (status := await asyncio.to_thread(state, app))[0] != "RUNNING":
        if status[0] == "DEPLOY_FAILED":
            raise unavailable(f"model '{model}' failed to deploy: {status[1]}")
        if time.monotonic() > deadline:
            raise unavailable(f"model '{model}' did not start within {DEPLOY_TIMEOUT_S:.0f} s: {status[1]}")
        await asyncio.sleep(STATUS_INTERVAL_S)
    handle = serve.get_deployment_handle(model, app_name=app)
    if not await handle.ready.remote():
        raise load_failure(model, await handle.index.remote())


async def delete_and_wait(app: str) -> None:
    """Delete an application and wait (boundedly) until it is gone."""
    await asyncio.to_thread(delete, app)
    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while (await asyncio.to_thread(state, app))[0] != "NOT_STARTED" and time.monotonic() < deadline:
        await asyncio.sleep(STATUS_INTERVAL_S)
