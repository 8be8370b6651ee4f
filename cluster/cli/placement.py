"""Will a repository's deployments fit a Ray cluster? Pure arithmetic over reservations and node capacities,
so ``ric serve`` can size its local Ray or refuse at once, naming what does not fit and what to change,
instead of waiting for replicas that Ray can never place."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: What to change when replicas do not fit, for ``ric serve`` users.
HINTS = (
    "give the local Ray more with --num-cpus / --num-gpus, or reserve less per replica: --replica-num-cpus "
    "(AppArgs.replica_num_cpus), a model's num_cpus or gpu_fraction parameter, or its instance_group count "
    "(or KIND_CPU instead of KIND_GPU)"
)


@dataclass(frozen=True)
class Shortfall:
    """Replicas of one deployment that no node has room for."""

    deployment: str
    missing: int
    replicas: int
    num_cpus: float
    num_gpus: float

    def __str__(self) -> str:
        asks = f"CPU {self.num_cpus:g}" + (f", GPU {self.num_gpus:g}" if self.num_gpus else "")
        return f"'{self.deployment}': {self.missing} of {self.replicas} replicas cannot be placed (each asks {asks})"


def shortfalls(reservations, nodes: list[dict[str, float]]) -> list[Shortfall]:
    """Place every replica first-fit on the nodes' free resources; the replicas left over, per deployment.

    ``reservations``: ``cluster.app.Reservation`` items in start order; ``nodes``: each node's resources
    (``{"CPU": 2.0, "GPU": 1.0}``).
    """
    free = [dict(node) for node in nodes]
    short = []
    for r in reservations:
        placed = 0
        for _ in range(r.replicas):
            node = next((n for n in free if n.get("CPU", 0) + 1e-9 >= r.num_cpus
                         and n.get("GPU", 0) + 1e-9 >= r.num_gpus), None)
            if node is None:
                break
            node["CPU"] = node.get("CPU", 0) - r.num_cpus
            node["GPU"] = node.get("GPU", 0) - r.num_gpus
            placed += 1
        if placed < r.replicas:
            short.append(Shortfall(r.deployment, r.replicas - placed, r.replicas, r.num_cpus, r.num_gpus))
    return short


def local_cpus(reservations, cores: int) -> int:
    """Logical CPUs for a local Ray: the machine's cores, or the repository's total reservation if larger.

    A reservation is a scheduling token, not a core: an idle model must not keep the others from loading
    (Triton loads any repository on any machine), so a local Ray offers at least what the deployments reserve.
    """
    need = sum(r.replicas * r.num_cpus for r in reservations)
    return max(cores, math.ceil(need - 1e-9))


def describe(short: list[Shortfall], nodes: list[dict[str, float]]) -> str:
    total_cpu = sum(n.get("CPU", 0) for n in nodes)
    total_gpu = sum(n.get("GPU", 0) for n in nodes)
    lines = [f"the repository's deployments do not fit this Ray cluster ({len(nodes)} node(s), CPU {total_cpu:g}, "
             f"GPU {total_gpu:g} in all):"]
    lines += [f"  - {s}" for s in short]
    lines.append(f"  to fix: {HINTS}")
    return "\n".join(lines)
