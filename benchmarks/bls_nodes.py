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

import argparse
import json
import os
import statistics
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # 127.0.0.1 nodes (before Ray is imported)

from benchmarks import report  # noqa: E402
from benchmarks.bls import BLS, DIRECT, write_repository  # noqa: E402
from benchmarks.dataplane import Running, describe_line, environment, free_port, measure_cell, positive_float  # noqa: E402
from benchmarks.dataplane_report import fmt  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
SOURCE = "benchmarks/bls_nodes.py"
LAYOUTS = {"apart": (1, [1]), "together": (2, [])}  # head CPUs, worker CPUs
PLACED = '\nparameters { key: "num_cpus" value { string_value: "0.6" } }\n'


@contextmanager
def serve_layout(repository: Path, head_cpus: int, worker_cpus: list[int]):
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from cluster.app import AppArgs, build
    from cluster.names import APP_NAME

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    for cpus in worker_cpus:
        nodes.add_node(num_cpus=cpus)
    ray.init(address=nodes.address, log_to_driver=False)
    port = free_port()
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build(AppArgs(repository=str(repository), replica_num_cpus=0)), name=APP_NAME, route_prefix="/")
        yield Running(f"http://127.0.0.1:{port}", None, os.getpid())
    finally:
        serve.shutdown()
        ray.shutdown()
        nodes.shutdown()


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
    for layout in LAYOUTS:
        for concurrency in results["settings"]["concurrency"]:
            def of(model, key, pick=statistics.median):
                values = [c[key] for c in cells if c["server"] == layout and c["concurrency"] == concurrency
                          and c["model"] == model and c.get(key) is not None]
                return pick(values) if values else None
            direct, bls = of(DIRECT, "requests_per_s"), of(BLS, "requests_per_s")
            lines.append(f"| {layout} | {concurrency} | {fmt(direct, ',.0f')} | {fmt(bls, ',.0f')} | "
                         f"{fmt(bls / direct if direct and bls else None, '.2f')}x | "
                         f"{fmt(of(DIRECT, 'p99_ms', max), '.2f')} / {fmt(of(BLS, 'p99_ms', max), '.2f')} |")
    failed = [c for c in results["cells"] if "error" in c]
    if failed:
        lines += ["", f"{len(failed)} cells failed: " + "; ".join(describe_line(c)[:200] for c in failed)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=positive_float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-bls-nodes.json"))
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    command = "python benchmarks/bls_nodes.py" + (" " + " ".join(argv) if argv else "")
    results = {"environment": environment(argv) | {"command": command},
               "settings": {"seconds": args.seconds, "rounds": args.rounds, "concurrency": args.concurrency},
               "cells": []}
    with tempfile.TemporaryDirectory(prefix="ric-bls-nodes-") as tmp:
        workdir = Path(tmp)
        repository = write_repository(workdir / "repository")
        for model in (DIRECT, BLS):
            config = repository / model / "config.pbtxt"
            config.write_text(config.read_text() + PLACED)
        for round_ in range(1, args.rounds + 1):
            for layout, (head_cpus, worker_cpus) in LAYOUTS.items():
                with serve_layout(repository, head_cpus, worker_cpus) as running:
                    for model in (DIRECT, BLS):
                        for concurrency in args.concurrency:
                            cell = measure_cell(running, layout, round_, "http-binary", concurrency, args.seconds,
                                                args.warmup, workdir, model=model)
                            cell["model"] = model
                            results["cells"].append(cell)
                            print(f"[round {round_}] {layout:<9} {model:<12} {describe_line(cell)}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    section = markdown(results)
    print()
    print(section)
    if args.write_docs:
        report.write_section(DOCS, section, SOURCE)
    return 1 if any("error" in c for c in results["cells"]) else 0


if __name__ == "__main__":
    sys.exit(main())
