"""Serve's request router for models with Triton's sequence batcher: every request of a sequence reaches the
same replica, different sequences spread over the replicas.

A request that names a sequence (its ``sequence_id`` parameter) goes to the replica that rendezvous hashing
of the id over the replicas' ids picks: every router (each ingress replica's, each Ray job's handle) picks
the same one from the same replicas, with no shared state. This router also remembers where it sent each
sequence it saw start, so a replica added later (autoscaling) does not take over running sequences; a
sequence whose replica is gone goes to the hash's choice, which holds no such sequence and answers a clear
error. Requests without a sequence use Serve's default (power of two choices).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, RunningReplica

from deployments.scheduling.sequences import sequence_key

ROUTER_CLASS = "deployments.scheduling.sequence_router.SequenceRouter"
#: The attribute of a sequence's pending request that names the replica chosen for it.
CHOSEN = "ric_sequence_replica"
#: Sequences whose replica one router remembers (the oldest are forgotten first).
REMEMBERED = 100_000


def request_parameters(pending_request: PendingRequest | None) -> Any:
    """The parameters of a ``ServedModel.infer_versioned(inputs, outputs, version, parameters)`` call."""
    if pending_request is None:
        return None
    args, kwargs = pending_request.args, pending_request.kwargs
    return args[3] if len(args) > 3 else kwargs.get("parameters")


def rendezvous(correlation_id: int | str, replica_ids: list[str]) -> str:
    """The replica id with the highest hash of (sequence, replica): stable while the replicas are."""
    key = f"{type(correlation_id).__name__}:{correlation_id}".encode()
    return max(replica_ids, key=lambda rid: hashlib.blake2b(key + b"/" + rid.encode(), digest_size=8).digest())


class SequenceRouter(PowerOfTwoChoicesRequestRouter):
    def _fulfill_next_pending_request(self, replica: RunningReplica, request_metadata: Any = None) -> None:
        """Give a replica that was found to the oldest waiting request it suits: a sequence's request only
        the replica chosen for its sequence, any other request any replica.

        Serve's FIFO matching (power of two) hands it to the oldest waiting request whatever it is, which
        broke sequences (16 at once over 4 replicas, within seconds); its base router's exact matching by
        request id leaves requests that share an id (every call made while serving one gRPC stream) unserved
        while their routing task spins."""
        for pending in self._pending_requests_to_fulfill:
            if pending.future.done() or getattr(pending, CHOSEN, replica.replica_id.unique_id) != \
                    replica.replica_id.unique_id:
                continue
            self._cancel_routing_task_for_pending_request(pending)
            self._record_queue_wait_time(pending)
            pending.future.set_result(replica)
            self._remove_pending_request_from_indices(pending)
            break
        while self._pending_requests_to_fulfill and self._pending_requests_to_fulfill[0].future.done():
            self._pending_requests_to_fulfill.popleft()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._placed: OrderedDict[int | str, str] = OrderedDict()  # sequence -> replica unique id

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        parameters = request_parameters(pending_request)
        correlation_id = sequence_key(parameters)
        if correlation_id is None or not candidate_replicas:
            return await super().choose_replicas(candidate_replicas, pending_request)
        by_id = {replica.replica_id.unique_id: replica for replica in candidate_replicas}
        placed = self._placed.get(correlation_id)
        if placed not in by_id:
            placed = rendezvous(correlation_id, sorted(by_id))
        setattr(pending_request, CHOSEN, placed)
        if parameters.get("sequence_end"):
            self._placed.pop(correlation_id, None)
        else:
            self._placed[correlation_id] = placed
            self._placed.move_to_end(correlation_id)
            while len(self._placed) > REMEMBERED:
                self._placed.popitem(last=False)
        return [[by_id[placed]]]
