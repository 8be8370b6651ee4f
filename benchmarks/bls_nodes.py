"""A BLS call across Ray nodes: the BLS model on one node calling add_sub on another, against the two on one node.

    .venv/bin/python benchmarks/bls_nodes.py [--seconds 5] [--rounds 2] [--concurrency 1 16] [--write-docs]

The repository is benchmarks/bls.py's (add_sub and bls_add_sub, one ``async_exec`` call per request), each
model in its own deployment with 0.6 CPUs. Two layouts, alternating by round, each a fresh
``ray.cluster_utils.Cluster`` on this machine: "apart", a head and a worker of 1 CPU each (the two models
cannot share a node, so every call crosses to the other raylet), and "together", one node of 2 CPUs. Requests
go to Serve's HTTP proxy on the head (``ric perf``, HTTP binary, closed loop). The section gives per layout
and concurrency add_sub called directly and through the BLS model (no CPU column: the cluster's processes
and the load generator are all this script's children here).
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # 127.0.0.1 nodes (before Ray is imported)

from benchmarks.bls import (BLS, DIRECT, arguments, failures, finish, measure_models, rows, started,  # noqa: E402
                            write_repository)
from benchmarks.dataplane import Running  # noqa: E402

SOURCE = "benchmarks/bls_nodes.py"
LAYOUTS = {"apart": (1, [1]), "together": (2, [])}  # head CPUs, worker CPUs
PLACED = '\nparameters { key: "num_cpus" value { string_value: "0.6" } }\n'


@contextmanager
def serve_layout(repository: Path, head_cpus: int, worker_cpus: list[int]):
    from tests.cluster.conftest import serve_on_nodes  # (the cluster tier's: a Cluster, Serve's proxy on the head)

    with serve_on_nodes(repository, head_cpus, worker_cpus, replica_num_cpus=0) as (_, url):
        yield Running(url, None, os.getpid())


def markdown(results: dict) -> str:
    env = results["environment"]
    cells = [c for c in results["cells"] if "error" not in c]
    lines = [f"### BLS across nodes ({env['date']}, `{env['command']}`, commit {env['commit']})", "",
             "bls_add_sub calling add_sub on another Ray node (apart: head and worker of 1 CPU each) or on the "
             "same one (together: one node of 2 CPUs), each model in its own deployment, through Serve's HTTP "
             "proxy, HTTP binary, closed loop; median req/s over the rounds, p99 the rounds' worst. "
             f"Machine: {env['machine']}.", "",
             "| layout | c | add_sub req/s | through BLS req/s | BLS / direct | p99 direct / BLS ms |",
             "|---|---|---|---|---|---|"]
    lines += rows(cells, LAYOUTS, results["settings"]["concurrency"], cpu=False)
    return "\n".join(lines + failures(results)) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = arguments(argv, __doc__, "benchmarks-bls-nodes.json")
    results = started(argv, args, SOURCE)
    with tempfile.TemporaryDirectory(prefix="ric-bls-nodes-") as tmp:
        workdir = Path(tmp)
        repository = write_repository(workdir / "repository")
        for model in (DIRECT, BLS):
            config = repository / model / "config.pbtxt"
            config.write_text(config.read_text() + PLACED)
        for round_ in range(1, args.rounds + 1):
            for layout, (head_cpus, worker_cpus) in LAYOUTS.items():
                with serve_layout(repository, head_cpus, worker_cpus) as running:
                    measure_models(running, layout, round_, args, workdir, results)
    return finish(results, args, markdown(results), SOURCE)


if __name__ == "__main__":
    sys.exit(main())
