"""The Markdown section of ``benchmarks/dataplane.py``'s run (docs/benchmarks.md, "Data plane"): the servers
it compares, and for each protocol and concurrency the median req/s over the rounds, p50 / p99, CPU per
1,000 requests and the ratio to Triton, then ric and Triton against the lean floor and each server at rest."""

from __future__ import annotations

import statistics

from benchmarks import report

TITLE = "## Data plane: ric vs Triton 2.51 on one node (Python add_sub)"

TRITON, RIC, RIC_OWN, LEAN = "Triton 2.51", "ric", "ric --no-colocate-python", "lean floor"
#: The servers, in the order each round runs them.
SERVERS = (TRITON, RIC, RIC_OWN, LEAN)
RIC_VARIANTS = (RIC, RIC_OWN)
DESCRIPTIONS = {
    TRITON: "tritonserver 2.51 (nvidia-pytriton 0.7.0's build, CPU only), Python backend, its own stub process",
    RIC: "`ric serve REPO --no-dashboard --metrics-port 0`: direct ingress, the Python model in a stub process "
         "of the ingress replica (the defaults)",
    RIC_OWN: "the same with `--no-colocate-python`: the Python model in its own deployment, a handle hop per request",
    LEAN: "benchmarks/lean_floor.py: one process, uvloop + httptools, numpy add/sub, HTTP only",
}
PROTOCOLS = ("http-binary", "http-json", "grpc")
HTTP_PROTOCOLS = ("http-binary", "http-json")
LABELS = {"http-binary": "HTTP binary", "http-json": "HTTP JSON", "grpc": "gRPC"}


def protocols_of(name: str) -> tuple[str, ...]:
    return HTTP_PROTOCOLS if name == LEAN else PROTOCOLS

# -- the section ------------------------------------------------------------------------------------------------

def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def summarize(results: dict, name: str, protocol: str, concurrency: int) -> dict | None:
    """Median req/s over the rounds that measured; the median run's latencies (for an even count, the
    faster of the middle two); median CPU-s per 1,000 requests; None when no round measured it."""
    runs = [c for c in results["cells"] if c["server"] == name and c["protocol"] == protocol
            and c["concurrency"] == concurrency]
    good = sorted((c for c in runs if "error" not in c), key=lambda c: c["requests_per_s"])
    if not runs:
        return None
    if not good:
        return {"error": runs[0]["error"], "failed": len(runs)}
    middle = good[len(good) // 2]
    per_1k = [c["cpu_s_per_1k"] for c in good if c.get("cpu_s_per_1k") is not None]
    return {"requests_per_s": statistics.median(c["requests_per_s"] for c in good),
            "runs": [c["requests_per_s"] for c in sorted(runs, key=lambda c: c["round"]) if "error" not in c],
            "p50_ms": middle["p50_ms"], "p99_ms": middle["p99_ms"],
            "cpu_s_per_1k": statistics.median(per_1k) if per_1k else None,
            "errors": sum(c.get("errors") or 0 for c in good), "failed": len(runs) - len(good)}


def markdown(results: dict) -> str:
    """The section for docs/benchmarks.md: the command and machine, then the tables."""
    env, settings = results["environment"], results["settings"]
    versions = {i["server"]: i["version"] for i in results["servers"] if i.get("version", "unknown") != "unknown"}
    concurrency = settings["concurrency"]
    lines = [
        TITLE, "",
        (f"`{env['command']}` on {env['date']} ({env['commit']}): {env['machine']}; {env['platform']}, "
         f"Python {env['python']}. Servers as they answered `GET /v2`: "
         + ", ".join(f"{name} = {versions[name]}" for name in SERVERS if name in versions) + "."),
        "",
        ("One Triton-form repository, Triton's add_sub example (Python backend, INT32 [16] + INT32 [16], "
         "max_batch_size 8, dynamic batching, one instance), served by each of:"),
        "",
        *(f"- **{name}**: {DESCRIPTIONS[name]}" for name in SERVERS),
        "",
        f"One server at a time, {settings['rounds']} round(s) of all four in the same order. Each cell is",
        f"`ric perf add_sub --protocol P --concurrency C --seconds {settings['seconds']:g} --warmup 0` (closed",
        f"loop, batch 1) after an unmeasured {settings['warmup']:g} s run of the same cell. req/s: the median over",
        "the rounds (each round's value in brackets); p50 / p99: the median run's (of an even count, the faster",
        "of the middle two). CPU: what the server's processes and all their descendants used during the",
        "measured invocation (utime + stime from /proc; not the load generator's), per 1,000 requests, median",
        "over the rounds; the invocation's own start and end (about half a second) count in it at the",
        "server's idle rate (the last table). The generator competes with the server for the same cores, so",
        "absolute numbers are low; read the ratios.",
        "",
        *report.header("protocol", "c", "server", "req/s (rounds)", "p50", "p99", "CPU-s / 1k req", "/ Triton"),
    ]
    for protocol in PROTOCOLS:
        for c in concurrency:
            triton = summarize(results, TRITON, protocol, c)
            for name in SERVERS:
                if protocol not in protocols_of(name):
                    continue
                s = summarize(results, name, protocol, c)
                if s is None:
                    continue
                if "error" in s:
                    lines.append(report.row(LABELS[protocol], c, name, f"failed: {short(s['error'])}", "", "", "",
                                            ""))
                    continue
                runs = " / ".join(f"{r:.0f}" for r in s["runs"])
                notes = (f", {s['errors']} errors" if s["errors"] else "") + (
                    f", {s['failed']} round(s) failed" if s["failed"] else "")
                versus = "—" if name == TRITON else report.fmt_ratio(report.ratio(
                    s["requests_per_s"], triton.get("requests_per_s") if triton else None))
                lines.append(report.row(LABELS[protocol], c, name, f"{s['requests_per_s']:.0f} ({runs}){notes}",
                                        f"{s['p50_ms']:.2f} ms", f"{s['p99_ms']:.2f} ms",
                                        fmt(s["cpu_s_per_1k"], ".2f"), versus))
    floor_c = 16 if 16 in concurrency else max(concurrency)
    lines += ["", f"Against the lean floor, HTTP, c={floor_c} (median req/s over median req/s):", "",
              *report.header("server", *(f"{LABELS[p]} / lean floor" for p in HTTP_PROTOCOLS))]
    for name in (*RIC_VARIANTS, TRITON):
        ratios = []
        for protocol in HTTP_PROTOCOLS:
            ours, floor = summarize(results, name, protocol, floor_c), summarize(results, LEAN, protocol, floor_c)
            ratios.append(report.fmt_ratio(report.ratio(*(s.get("requests_per_s") if s else None
                                                          for s in (ours, floor)))))
        lines.append(report.row(name, *ratios))
    lines += ["", "Each server started and at rest (CPU over a short idle window before the cells):", "",
              *report.header("server", "start-up (s)", "processes", "idle CPU (cores)", "problems")]
    for name in SERVERS:
        infos = [i for i in results["servers"] if i["server"] == name]
        started = [i for i in infos if "startup_s" in i]
        problems = "; ".join([*(f"round {i['round']}, first start: {short(i['failed_start'])}" for i in infos
                                if i.get("failed_start")),
                              *(f"round {i['round']}: {short(i['error'])}" for i in infos if i.get("error"))])
        lines.append(report.row(
            name, " / ".join(f"{i['startup_s']:.1f}" for i in started) or "n/a",
            " / ".join(str(i.get("processes", "?")) for i in started) or "n/a",
            " / ".join(f"{i['idle_cores']:.2f}" for i in started if "idle_cores" in i) or "n/a", problems or "none"))
    return "\n".join(lines) + "\n"


def short(error: str) -> str:
    """An error's first line and, when it has more (a log), its last: what a table cell can hold."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    text = lines[0][:120] + (f" ... {lines[-1][:120]}" if len(lines) > 1 else "")
    return text.replace("|", "/")
