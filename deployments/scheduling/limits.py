"""What a model's config says about scheduling its requests: the queue policy's timeout for a request,
the batch the dynamic batcher may form, and the application's bounds where the config sets none. Pure
arithmetic over the config; no Ray here."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.config.model_config import ModelConfig


@dataclass(frozen=True)
class ServingLimits:
    """The application's bounds on a model's requests, where its config does not set its own."""

    #: How long a request may wait in its replica, queue and execution (config: ``execution_timeout_s``).
    execution_timeout_s: float = 300.0
    #: Requests that may wait for a model replica (config: ``default_queue_policy.max_queue_size``); over it
    #: requests answer 503. Serve enforces it for a model's own deployment, ModelService for a colocated copy.
    max_queued_requests: int = 1024
    #: Requests a model replica works on at once (Serve's max_ongoing_requests).
    max_ongoing_requests: int = 64
    #: Bytes the response cache of each copy of a model with ``response_cache { enable: true }`` may hold.
    response_cache_bytes: int = 64 * 2**20
    #: Where models with a ``payload_log`` block write their payloads: a folder or ``s3://bucket/prefix``
    #: (empty: nowhere, and such a model logs an error instead).
    payload_log: str = ""


def max_queued(config: ModelConfig, limits: ServingLimits) -> int:
    """Requests that may wait for the model: the config's ``max_queue_size`` if it sets one, else the
    application's default."""
    policy = config.dynamic_batching and config.dynamic_batching.default_queue_policy
    return (policy.max_queue_size if policy and policy.max_queue_size else 0) or limits.max_queued_requests


def queue_timeout_ns(config: ModelConfig, arrived_ns: int, parameters: dict | None, level: int = 0
                     ) -> tuple[str, int] | None:
    """Triton's queue policy for a request at priority ``level``: its action (REJECT or DELAY) and when its
    ``default_timeout_microseconds`` (or its own ``timeout`` parameter, in microseconds, where
    ``allow_timeout_override``) runs out; None when it may wait without end."""
    policy = config.dynamic_batching and config.dynamic_batching.queue_policy(level)
    if policy is None:
        return None
    timeout_us = policy.default_timeout_microseconds
    requested = (parameters or {}).get("timeout")
    if policy.allow_timeout_override and isinstance(requested, int) and not isinstance(requested, bool) \
            and requested > 0:
        timeout_us = requested
    return (policy.timeout_action, arrived_ns + timeout_us * 1000) if timeout_us > 0 else None


def batch_limits(config: ModelConfig) -> tuple[int, float] | None:
    """Rows per batch and the longest wait for one, from the config's dynamic_batching or its sequence
    batcher's strategy (which batches the next requests of different sequences); None: no batching.

    With preferred sizes, batches are cut at the largest one, as Triton aims for preferred sizes.
    """
    if config.dynamic_batching is not None:
        batching = config.dynamic_batching
    elif config.sequence_batching is not None and config.batching:
        batching = config.sequence_batching.strategy
    else:
        return None
    size = max(batching.preferred_batch_size, default=config.max_batch_size)
    return size, batching.max_queue_delay_microseconds / 1e6
