"""The data plane side by side: ric and real Triton 2.51 serving one Python-backend model on one node.

    .venv/bin/python benchmarks/dataplane.py [--seconds 5] [--rounds 2] [--concurrency 1 16 64]
                                             [--out docs/benchmarks-dataplane.json] [--write-docs]

Writes Triton's add_sub example (benchmarks/triton_peer.py: Python backend, INT32 [16] in and out) into a
temporary repository and serves that same folder, one server at a time, with:
  Triton 2.51        tritonserver from .venv-triton (bash benchmarks/install_triton.sh)
  ric                `ric serve REPO --no-dashboard --metrics-port 0`, its defaults: the "direct" ingress
                     (each ingress replica listens on the HTTP and gRPC ports itself) and the Python model
                     in a stub process of the ingress replica
  ric own deployment the same with --no-colocate-python: the Python model in its own deployment, a Serve
                     handle hop per request
  lean floor         benchmarks/lean_floor.py, the least an HTTP server can do for add_sub (HTTP only)
Rounds alternate the servers (round 1: A B C D, round 2: A B C D again, ...), so each cell has one value
per round and the machine's drift falls on every server alike. Every cell is one `ric perf` invocation
(one protocol, one concurrency, closed loop, --warmup 0), after an unmeasured warm-up invocation of the same
cell; around the measured one, the CPU time of the server's process and all its descendants is read
(utime + stime, and that of children they reaped, from /proc/<pid>/stat through psutil), so the load
generator's own CPU is not counted. Prints a Markdown section (see ``markdown``) and writes every raw value
as JSON to --out; --write-docs also puts the section into docs/benchmarks.md between its markers
(``report.write_section``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import report
from benchmarks.dataplane_report import (
    RIC_OWN, RIC_VARIANTS, SERVERS, TRITON, fmt, markdown, protocols_of,
)
from benchmarks.lean_floor import run_lean_floor
from benchmarks.triton_peer import (
    TRITON_VENV,
    run_triton,
    triton_binary,
    write_add_sub_repository,
)

BIN = Path(sys.executable).parent
MODEL = "add_sub"
DOCS = ROOT / "docs" / "benchmarks.md"
SOURCE = "benchmarks/dataplane.py"  # the name of its section's markers in docs/benchmarks.md
#: Environment variables a user's shell does not have: leave ric serve to choose its own settings.
RAY_SETTINGS = ("RAY_SERVE_ENABLE", "RAY_SERVE_THROUGHPUT", "RAY_ENABLE")


def free_port() -> int:
    """A port free on 127.0.0.1, below the kernel's ephemeral range where it can: a port the kernel hands
    out (to Ray's own listeners and clients, or to other programs) between this pick and the server's bind
    would fail the server's start."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    for _ in range(50 if low > 12000 else 0):
        port = random.randrange(10000, low)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- CPU of a process tree -----------------------------------------------------------------------------------

def tree_cpu(pid: int) -> dict[tuple[int, float], float]:
    """CPU-seconds (user + system, own and of reaped children) of ``pid`` and every descendant, by
    (pid, create time) so that a reused pid is not mistaken for the process it replaced."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            times = process.cpu_times()
            seconds[process.pid, process.create_time()] = (times.user + times.system + times.children_user
                                                           + times.children_system)
    return seconds


def cpu_between(before: dict, after: dict) -> float:
    """CPU-seconds the tree used between two ``tree_cpu`` readings (processes new since ``before`` count
    from zero; those gone since are left out, or counted in their parent's reaped-children time)."""
    return sum(max(0.0, seconds - before.get(key, 0.0)) for key, seconds in after.items())


def child_with(port: int, word: str) -> int:
    """The pid of this process's child whose command line names ``word`` and ``port``."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            line = child.cmdline()
            if str(port) in line and any(word in part for part in line):
                return child.pid
    raise RuntimeError(f"no child process with {word} on port {port}")


def log_tail(pid: int, chars: int = 3000) -> str:
    """The end of what ``pid`` writes to its stdout, when that is a file (Triton's log)."""
    with contextlib.suppress(OSError):
        path = os.readlink(f"/proc/{pid}/fd/1")
        if path.startswith("/"):
            with open(path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - chars))
                return log.read().decode(errors="replace")
    return ""


# -- the servers -----------------------------------------------------------------------------------------------

class Running:
    """A started server: where it answers, the root of its process tree, and its output so far."""

    def __init__(self, url: str, grpc: str | None, pid: int, log=lambda: ""):
        self.url, self.grpc, self.pid, self.log = url, grpc, pid, log


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def server_version(url: str) -> str:
    with contextlib.suppress(urllib.error.URLError, OSError, ValueError, KeyError), \
            urllib.request.urlopen(f"{url}/v2", timeout=5) as response:
        meta = json.loads(response.read())
        return f"{meta.get('name', '?')} {meta['version']}"
    return "unknown"


@contextlib.contextmanager
def ric_serve(repository: Path, home: Path, own_deployment: bool, timeout_s: float = 300) -> Iterator[Running]:
    """``ric serve`` in its own session (process group) until the block ends; stopped by its pid."""
    http, grpc = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(RAY_SETTINGS)}
    env["HOME"] = str(home)  # its record of how to reach it goes there, not into the user's HOME
    command = [str(BIN / "ric"), "serve", str(repository), "--no-dashboard", "--metrics-port", "0",
               "--http-port", str(http), "--grpc-port", str(grpc), *(["--no-colocate-python"] * own_deployment)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               text=True, env=env, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    log = lambda: "".join(lines)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + timeout_s
        while not (any(line.startswith("ric: serving") for line in lines) and ready(url)):
            if process.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with status {process.returncode}" if process.poll() is not None
                       else f"was not serving after {timeout_s:g} s")
                raise RuntimeError(f"ric serve {why}; its output ends:\n{log()[-3000:]}")
            time.sleep(0.25)
        yield Running(url, f"127.0.0.1:{grpc}", process.pid, log)
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen, grace_s: float = 120) -> None:
    """SIGTERM to the process group ``process`` leads, SIGKILL after ``grace_s``; then any descendant left."""
    below: list[psutil.Process] = []
    with contextlib.suppress(psutil.NoSuchProcess):
        below = psutil.Process(process.pid).children(recursive=True)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for child in below:  # one that left the group: by its own pid
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            child.kill()


@contextlib.contextmanager
def start(name: str, repository: Path, workdir: Path) -> Iterator[Running]:
    if name == TRITON:
        http, grpc = free_port(), free_port()
        with run_triton(repository, http, grpc, None) as url:
            pid = child_with(http, "tritonserver")
            yield Running(url, f"127.0.0.1:{grpc}", pid, lambda: log_tail(pid))
    elif name in RIC_VARIANTS:
        home = workdir / f"home-{len(list(workdir.glob('home-*')))}"
        home.mkdir()
        with ric_serve(repository, home, own_deployment=name == RIC_OWN) as running:
            yield running
    else:
        port = free_port()
        with run_lean_floor(port) as url:
            yield Running(url, None, child_with(port, "lean_floor.py"))


# -- one cell --------------------------------------------------------------------------------------------------

def ric_perf(running: Running, protocol: str, concurrency: int, seconds: float, out: Path,
             model: str = MODEL) -> tuple[int, str]:
    command = [str(BIN / "ric"), "perf", model, "--url", running.url, "--grpc-url", running.grpc or "127.0.0.1:1",
               "--protocol", protocol, "--concurrency", str(concurrency), "--seconds", str(seconds),
               "--warmup", "0", "--json", str(out)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 180,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"ric perf did not finish within {seconds + 180:g} s"
    return done.returncode, (done.stdout + done.stderr).strip()


def measure_cell(running: Running, name: str, round_: int, protocol: str, concurrency: int, seconds: float,
                 warmup: float, workdir: Path, idle_cores: float = 0.0, model: str = MODEL) -> dict:
    """An unmeasured warm-up invocation, then the measured one with the server tree's CPU read around it.

    The CPU window is the whole invocation: the load, and ric perf's own start and end around it, during
    which the server idles; ``idle_cpu_s_est`` estimates that part (the server's idle rate times the window
    beyond the measured seconds), kept in the JSON beside the raw figure the tables show."""
    cell = {"server": name, "round": round_, "protocol": protocol, "concurrency": concurrency,
            **({"model": model} if model != MODEL else {})}
    out = workdir / "perf.json"
    if warmup > 0:
        ric_perf(running, protocol, concurrency, warmup, out, model)
    out.unlink(missing_ok=True)
    before, started = tree_cpu(running.pid), time.monotonic()
    status, output = ric_perf(running, protocol, concurrency, seconds, out, model)
    after, window = tree_cpu(running.pid), time.monotonic() - started
    cpu_s = cpu_between(before, after)
    if status not in (0, 1) or not out.exists():  # 1: some requests failed, the cell still measured
        return {**cell, "error": output[-1500:] or f"ric perf exit status {status}", "cpu_s": cpu_s,
                "window_s": window}
    measured = json.loads(out.read_text())[0]
    requests = measured["requests"]
    return {**cell, **{k: measured[k] for k in ("requests", "errors", "seconds", "requests_per_s", "p50_ms",
                                                 "p90_ms", "p99_ms", "first_error")},
            "server_split": measured.get("server"),
            "cpu_s": cpu_s, "window_s": window, "server_cores": cpu_s / window if window else None,
            "idle_cpu_s_est": idle_cores * max(0.0, window - measured["seconds"]),
            "cpu_s_per_1k": 1000 * cpu_s / requests if requests else None}


def measure_server(name: str, round_: int, repository: Path, workdir: Path, args) -> tuple[dict, list[dict]]:
    """Start one server (a second try when the first start fails), measure its cells, stop it; returns
    (what the start saw, the cells). A server that fails to start twice, or dies, fails its cells alone."""
    info: dict = {"server": name, "round": round_}
    cells: list[dict] = []
    loads = [(p, c) for p in protocols_of(name) for c in args.concurrency]
    for attempt in (1, 2):
        started, serving = time.monotonic(), False
        try:
            with start(name, repository, workdir) as running:
                serving = True
                info["startup_s"] = time.monotonic() - started
                info["version"] = server_version(running.url)
                idle_s = min(2.0, args.seconds)
                before = tree_cpu(running.pid)
                time.sleep(idle_s)
                info["idle_cores"] = cpu_between(before, tree_cpu(running.pid)) / idle_s
                info["processes"] = len(tree_cpu(running.pid))
                for protocol, concurrency in loads:
                    cell = measure_cell(running, name, round_, protocol, concurrency, args.seconds, args.warmup,
                                        workdir, info["idle_cores"])
                    cells.append(cell)
                    print(f"[round {round_}] {describe_line(cell)}", flush=True)
                info["log_tail"] = running.log()[-3000:]
                if not psutil.pid_exists(running.pid):
                    info["error"] = "the server exited during the cells"
            break
        except Exception as exc:  # noqa: BLE001 (a failed server fails its own cells; the others still run)
            error = f"{type(exc).__name__}: {exc}"[:3000]
            print(f"[round {round_}] {name}{'' if serving else f' (start {attempt} of 2)'}: {error}", flush=True)
            if not serving and attempt == 1:
                info["failed_start"] = error
                continue
            info["error"] = error
            done = {(c["protocol"], c["concurrency"]) for c in cells}
            cells += [{"server": name, "round": round_, "protocol": p, "concurrency": c,
                       "error": f"server failed: {error[:300]}"} for p, c in loads if (p, c) not in done]
            break
    return info, cells


def describe_line(cell: dict) -> str:
    head = f"{cell['server']:<22} {cell['protocol']:<11} c={cell['concurrency']:<3}"
    if "error" in cell:
        return f"{head} FAILED: {cell['error'][:300]}"
    text = (f"{head} {cell['requests_per_s']:8.1f} req/s  p50 {cell['p50_ms']:6.2f}  p99 {cell['p99_ms']:6.2f} ms  "
            f"server CPU {cell['cpu_s']:.2f} s ({fmt(cell['cpu_s_per_1k'], '.2f')} s / 1k req)")
    if cell.get("errors"):
        text += f"  errors {cell['errors']}: {(cell.get('first_error') or '')[:200]}"
    return text


# -- the command ---------------------------------------------------------------------------------------------

def environment(argv: list[str]) -> dict:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    return {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/dataplane.py" + (" " + shlex.join(argv) if argv else ""),
        "commit": commit.stdout.strip() or "unknown commit",
        "machine": f"{platform.machine()}, os.cpu_count() = {os.cpu_count()} ({report.cpu_model()})",
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=positive_float, default=5.0, help="measured seconds per cell (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all servers (default 2)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64],
                        help="closed-loop concurrencies (default 1 16 64)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="seconds of the unmeasured run before each cell (default 1; 0: none)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-dataplane.json"),
                        help="JSON file for every raw value (default docs/benchmarks-dataplane.json)")
    parser.add_argument("--write-docs", action="store_true",
                        help=f"also put the section into {DOCS.relative_to(ROOT)} (between its markers)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or any(c < 1 for c in args.concurrency):
        parser.error("--rounds and --concurrency must be >= 1")
    if triton_binary() is None:
        print(f"dataplane: Triton is not installed in {TRITON_VENV}: run bash benchmarks/install_triton.sh",
              file=sys.stderr)
        return 2
    # SIGTERM ends the run as Ctrl-C does: through the finally blocks that stop the servers.
    signal.signal(signal.SIGTERM, interrupt)

    results = {"environment": environment(argv),
               "settings": {"seconds": args.seconds, "rounds": args.rounds, "concurrency": args.concurrency,
                            "warmup": args.warmup, "servers": list(SERVERS)},
               "servers": [], "cells": []}
    with tempfile.TemporaryDirectory(prefix="ric-dataplane-") as tmp:
        workdir = Path(tmp)
        repository = write_add_sub_repository(workdir / "repository")
        for round_ in range(1, args.rounds + 1):
            for name in SERVERS:
                info, cells = measure_server(name, round_, repository, workdir, args)
                results["servers"].append(info)
                results["cells"] += cells
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    section = markdown(results)
    print()
    print(section)
    print(f"wrote {out}")
    if args.write_docs:
        report.write_section(DOCS, section, SOURCE)
        print(f"wrote the section into {DOCS}")
    return 1 if any("error" in c for c in results["cells"]) else 0


if __name__ == "__main__":
    sys.exit(main())
