"""The cost of one BLS call, on real Triton 2.51 and on ric, side by side on one node.

    .venv/bin/python benchmarks/bls.py [--seconds 5] [--rounds 2] [--concurrency 1 16] [--write-docs]

The repository holds Triton's add_sub example (benchmarks/triton_peer.py: Python backend, INT32 [16]) and
``bls_add_sub``, a Python model with the same inputs and outputs that answers each request by calling
add_sub once (``await InferenceRequest(model_name="add_sub", ...).async_exec()``, the requests of a batch
gathered). Each server (Triton; ``ric serve`` with its defaults: Python models in the ingress's stub
processes) serves that same folder, one at a time, rounds alternating; each cell is one ``ric perf`` run over
HTTP binary, with the server's CPU read around it (benchmarks/dataplane.py ``measure_cell``). The section it
prints (and with --write-docs puts into docs/benchmarks.md) gives, per server and concurrency, the median
req/s of add_sub called directly and through the BLS model, and their ratio: what the BLS hop costs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report
from benchmarks.dataplane import environment, measure_cell, positive_float, start, describe_line
from benchmarks.dataplane_report import RIC, TRITON, fmt
from benchmarks.triton_peer import ADD_SUB_CONFIG, TRITON_VENV, triton_binary, write_add_sub_repository

DOCS = ROOT / "docs" / "benchmarks.md"
SOURCE = "benchmarks/bls.py"
DIRECT, BLS = "add_sub", "bls_add_sub"
SERVERS = (TRITON, RIC)

BLS_MODEL = '''\
"""add_sub through one BLS call per request: the requests of a batch call add_sub at once."""

import asyncio

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    async def execute(self, requests):
        calls = [pb_utils.InferenceRequest(
            model_name="add_sub", requested_output_names=["OUTPUT0", "OUTPUT1"],
            inputs=[pb_utils.get_input_tensor_by_name(request, name) for name in ("INPUT0", "INPUT1")])
            for request in requests]
        answers = await asyncio.gather(*(call.async_exec() for call in calls))
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(answer.error().message()))
                if answer.has_error() else pb_utils.InferenceResponse(answer.output_tensors())
                for answer in answers]
'''


def write_repository(root: Path) -> Path:
    write_add_sub_repository(root)
    model = root / BLS
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(ADD_SUB_CONFIG.replace("SIZE", "16"))
    (model / "1" / "model.py").write_text(BLS_MODEL)
    return root


def rows(cells: list[dict], names, concurrencies, cpu: bool = True) -> list[str]:
    """The table's rows: per server (or layout) and concurrency, add_sub direct and through BLS (median req/s
    over the rounds, p99 the rounds' worst, and server CPU per 1,000 requests where ``cpu``)."""
    lines = []
    for name in names:
        for concurrency in concurrencies:
            def of(model, key, pick=statistics.median):
                values = [c[key] for c in cells if c["server"] == name and c["concurrency"] == concurrency
                          and c.get("model", DIRECT) == model and c.get(key) is not None]
                return pick(values) if values else None
            direct, bls = of(DIRECT, "requests_per_s"), of(BLS, "requests_per_s")
            ratio = bls / direct if direct and bls else None
            line = (f"| {name} | {concurrency} | {fmt(direct, ',.0f')} | {fmt(bls, ',.0f')} | {fmt(ratio, '.2f')}x | "
                    f"{fmt(of(DIRECT, 'p99_ms', max), '.2f')} / {fmt(of(BLS, 'p99_ms', max), '.2f')} |")
            if cpu:
                line += f" {fmt(of(DIRECT, 'cpu_s_per_1k'), '.2f')} / {fmt(of(BLS, 'cpu_s_per_1k'), '.2f')} |"
            lines.append(line)
    return lines


def failures(results: dict) -> list[str]:
    failed = [c for c in results["cells"] if "error" in c]
    return ["", f"{len(failed)} cells failed: " + "; ".join(describe_line(c)[:200] for c in failed)] if failed else []


def markdown(results: dict) -> str:
    env = results["environment"]
    cells = [c for c in results["cells"] if "error" not in c]
    lines = [f"### BLS: the cost of one call ({env['date']}, `{env['command']}`, commit {env['commit']})", "",
             "add_sub called directly and through `bls_add_sub` (one `async_exec` call to add_sub per request), "
             "HTTP binary, closed loop; median req/s over the rounds, p99 the rounds' worst, server CPU per 1,000 "
             f"requests. Machine: {env['machine']}.", "",
             "| server | c | add_sub req/s | through BLS req/s | BLS / direct | p99 direct / BLS ms "
             "| CPU s/1k direct / BLS |",
             "|---|---|---|---|---|---|---|"]
    lines += rows(cells, SERVERS, results["settings"]["concurrency"])
    return "\n".join(lines + failures(results)) + "\n"


def arguments(argv: list[str], description: str, out: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=positive_float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", default=str(ROOT / "docs" / out))
    parser.add_argument("--write-docs", action="store_true")
    return parser.parse_args(argv)


def started(argv: list[str], args: argparse.Namespace, script: str) -> dict:
    command = f"python {script}" + (" " + " ".join(argv) if argv else "")
    return {"environment": environment(argv) | {"command": command},
            "settings": {"seconds": args.seconds, "rounds": args.rounds, "concurrency": args.concurrency},
            "cells": []}


def measure_models(running, name: str, round_: int, args: argparse.Namespace, workdir: Path, results: dict) -> None:
    """add_sub and bls_add_sub at every concurrency on one running server, into ``results``."""
    for model in (DIRECT, BLS):
        for concurrency in args.concurrency:
            cell = measure_cell(running, name, round_, "http-binary", concurrency, args.seconds, args.warmup,
                                workdir, model=model)
            cell["model"] = model
            results["cells"].append(cell)
            print(f"[round {round_}] {name:<12} {model:<12} {describe_line(cell)}", flush=True)


def finish(results: dict, args: argparse.Namespace, section: str, source: str) -> int:
    Path(args.out).write_text(json.dumps(results, indent=1))
    print()
    print(section)
    if args.write_docs:
        report.write_section(DOCS, section, source)
    return 1 if any("error" in c for c in results["cells"]) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = arguments(argv, __doc__, "benchmarks-bls.json")
    if triton_binary() is None:
        print(f"bls: Triton is not installed in {TRITON_VENV}: run bash benchmarks/install_triton.sh",
              file=sys.stderr)
        return 2
    results = started(argv, args, SOURCE)
    with tempfile.TemporaryDirectory(prefix="ric-bls-") as tmp:
        workdir = Path(tmp)
        repository = write_repository(workdir / "repository")
        for round_ in range(1, args.rounds + 1):
            for server in SERVERS:
                with start(server, repository, workdir) as running:
                    measure_models(running, server, round_, args, workdir, results)
    return finish(results, args, markdown(results), SOURCE)


if __name__ == "__main__":
    sys.exit(main())
