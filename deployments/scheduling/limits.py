"""What a model's config says about scheduling its requests: the queue policy's timeout for a request and
the batch the dynamic batcher may form. Pure arithmetic over the config; no Ray here."""

from __future__ import annotations

from deployments.config.model_config import ModelConfig


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
