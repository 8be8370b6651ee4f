"""The one data plane behind both transports: HTTP and gRPC decode, call these, encode.

It holds the model deployments' handles (passed in by the app builder) and the models whose config
failed, with the reason; every failure is an InferenceError with a transport-neutral code.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from deployments.backends import Tensors
from deployments.config import ConfigError, ModelConfig, parse_yaml
from deployments.errors import invalid, not_found, unavailable

SERVER_NAME = "ray-inference-cluster"
#: Request parameters the protocol itself uses; the rest reach the model.
PROTOCOL_PARAMETERS = {"binary_data_output"}
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]
#: How long a load or unload waits for the model's replicas to follow.
CONTROL_TIMEOUT_S = 120.0


class DataPlane:
    """Server and model operations over the model deployments' handles."""

    def __init__(self, models: dict[str, Any], failed: dict[str, str], version: str, statistics: Any,
                 sync: Any = None):
        self.models = models
        self.failed = failed
        self.version = version
        self.collector = statistics  # handle of the StatisticsCollector
        self.sync = sync  # handle of the ModelStoreSync

    def handle(self, model: str) -> Any:
        """The model's handle; unknown models are NOT_FOUND, models that failed to configure UNAVAILABLE."""
        if model in self.failed:
            raise unavailable(f"model '{model}' is not available: {self.failed[model]}")
        try:
            return self.models[model]
        except KeyError:
            raise not_found(f"unknown model '{model}'") from None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.version, "extensions": EXTENSIONS}

    async def server_ready(self) -> bool:
        """Strict readiness, as Triton's default: ready when every model in the repository is."""
        if self.failed:
            return False
        return all(await asyncio.gather(*(h.ready.remote() for h in self.models.values())))

    async def infer(
        self, model: str, version: str | None, inputs: Tensors, outputs: list[str] | None,
        parameters: dict | None = None,
    ) -> tuple[int, Tensors]:
        """Run a request on a model; returns the version that answered and the outputs. The request's
        parameters (less the protocol's own) go with it."""
        own = {k: v for k, v in (parameters or {}).items() if k not in PROTOCOL_PARAMETERS}
        return await self.handle(model).infer_versioned.remote(inputs, outputs, version, own or None)

    async def model_metadata(self, model: str, version: str | None = None) -> dict[str, Any]:
        metadata = await self.handle(model).metadata.remote()
        versions = metadata["versions"]
        if not versions:
            raise unavailable(f"model '{model}' is not ready")
        if version and version not in versions:
            raise not_found(f"model '{model}' has no ready version '{version}'; it serves {versions}")
        return metadata

    async def model_config(self, model: str) -> dict[str, Any]:
        return await self.handle(model).model_config.remote()

    async def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        rows = [row for rows in await asyncio.gather(*(h.index.remote() for h in self.models.values()))
                for row in rows]
        rows += [{"name": m, "version": "", "state": "UNAVAILABLE", "reason": r} for m, r in self.failed.items()]
        if ready_only:
            rows = [row for row in rows if row["state"] == "READY"]
        return sorted(rows, key=lambda row: (row["name"], row["version"]))

    async def statistics(self, model: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Triton's statistics for one model (one version) or all, summed over every replica."""
        if model:
            self.handle(model)
        names = [model] if model else sorted(self.models)
        metadata = await asyncio.gather(*(self.models[name].metadata.remote() for name in names))
        versions: dict[str, list[int]] = {}
        for name, meta in zip(names, metadata):
            if version:
                if version not in meta["versions"]:
                    raise not_found(f"model '{name}' has no ready version '{version}'; it serves {meta['versions']}")
                versions[name] = [int(version)]
            else:
                versions[name] = [int(v) for v in meta["versions"]]
        return {"model_stats": await self.collector.model_stats.remote(versions)}

    async def set_loaded(self, model: str, loaded: bool, parameters: dict | None = None) -> None:
        """Triton's repository load / unload for a model of this application, on every replica. A load may
        carry a ``config`` parameter (Triton's model config as JSON) that replaces the repository's config
        until the next load; the call returns once the replica it asks has followed.

        Models new to the repository need the application redeployed (docs/architecture.md says why).
        """
        parameters = parameters or {}
        if not isinstance(parameters, dict):
            raise invalid("'parameters' of a repository load must be an object")
        if any(k.startswith("file:") for k in parameters):
            raise invalid("loading with file overrides is not supported yet")
        self.handle(model)
        if self.sync is None or model not in await self._synced():
            raise invalid(f"model '{model}' cannot be loaded or unloaded (ensembles follow their steps)")
        config = override_config(model, parameters.get("config")) if loaded and "config" in parameters else None
        generation = await self.sync.set_loaded.remote(model, loaded, config)
        deadline = time.monotonic() + CONTROL_TIMEOUT_S
        while time.monotonic() < deadline:
            if await self.models[model].followed.remote() >= generation:
                return
            await asyncio.sleep(0.2)
        raise unavailable(f"model '{model}' did not {'load' if loaded else 'unload'} within {CONTROL_TIMEOUT_S:.0f} s")

    async def _synced(self) -> list[str]:
        return list((await self.sync.status.remote())["desired"])


def override_config(model: str, config: Any) -> ModelConfig:
    """The ``config`` parameter of a repository load (a JSON string, as tritonclient sends it, or an object)."""
    text = config if isinstance(config, str) else json.dumps(config)
    try:
        return parse_yaml(text, f"the config parameter of the load of '{model}'", model)
    except ConfigError as exc:
        raise invalid(str(exc)) from None
