"""What becomes of a request while it waits for a batch: its priority level, its queue timeout, its caller
going away. The dynamic batcher asks as requests leave its queue; no Ray here."""

from __future__ import annotations

import time

from deployments.backends import cancellation
from deployments.errors import ErrorCode, InferenceError, unavailable
from deployments.serving.pending import Pending
from deployments.serving.runner import ModelRunner


class QueuedRequests:
    """The queue rules of one model's requests (``ModelService``'s batcher callbacks)."""

    def __init__(self, runner: ModelRunner):
        self.runner = runner

    def priority(self, pending: Pending) -> int:
        """A queued request's level (1 first; 0 for models without levels), past a DELAY timeout the last."""
        if pending.delay_after_ns is not None and time.perf_counter_ns() > pending.delay_after_ns:
            return (self.runner.config.dynamic_batching.priority_levels or 0) + 1
        return pending.priority

    def expired(self, pending: Pending) -> Exception | None:
        """A queued request whose caller has gone, or whose queue timeout passed, does not run: it answers
        CANCELLED or UNAVAILABLE and gives its version back (the batcher asks as the request leaves the queue)."""
        if (cancelled := self.cancelled(pending)) is not None:
            return cancelled
        if pending.deadline_ns is None or time.perf_counter_ns() <= pending.deadline_ns:
            return None
        self.runner.release([pending], "REJECTED")
        waited_us = (time.perf_counter_ns() - pending.arrived_ns) // 1000
        return unavailable(f"model '{self.runner.name}': request timeout expired after {waited_us} us in the queue "
                           "(default_queue_policy)")

    def cancelled(self, pending: Pending) -> Exception | None:
        """The error of a request whose caller has gone, counted as CANCELED (None for the others)."""
        if not cancellation.is_cancelled(pending.info.token):
            return None
        self.runner.release([pending], "CANCELED")
        return InferenceError(ErrorCode.CANCELLED, f"model '{self.runner.name}': cancelled (its caller has gone)")

    def split(self, pending: list[Pending]) -> tuple[dict[int, Exception], list[Pending]]:
        """A batch about to run: the errors of the requests whose callers have gone, by position, and the rest."""
        dropped = {i: error for i, p in enumerate(pending) if (error := self.cancelled(p)) is not None}
        return dropped, [p for i, p in enumerate(pending) if i not in dropped]

    @staticmethod
    def merge(pending: list[Pending], dropped: dict[int, Exception], results: list) -> list:
        """The batch's answers in its order: the dropped requests' errors and the results of the rest."""
        ran = iter(results)
        return [dropped[i] if i in dropped else next(ran) for i in range(len(pending))]
