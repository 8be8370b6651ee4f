"""Turns the cells of one benchmarks/compare.py run into Markdown tables, the targets and a plot."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


SWEEP_LABELS = {"http-json": "HTTP JSON", "http-binary": "HTTP binary", "grpc": "gRPC", "handle": "handle"}
#: The configuration ``ric serve`` runs (HAProxy, throughput-optimized Serve, models colocated in the
#: ingress), and the one before colocation (every request hops from the ingress to the model deployment).
MAIN, BEFORE = "haproxy colocated", "haproxy"
SETUPS = {"default": "Serve's default proxy", BEFORE: "HAProxy, model in its own deployment",
          MAIN: "HAProxy, model colocated in the ingress"}


def find(cells: list[dict], **match) -> dict | None:
    for cell in cells:
        if all(cell.get(k) == v for k, v in match.items()):
            return cell
    return None


def server_batch(cell: dict | None) -> int:
    """The average batch (rows) the server formed in a cell, rounded; 1 where unknown."""
    server = (cell or {}).get("server")
    return max(1, round(server["batch"])) if server else 1


def limit_points(cells: list[dict]) -> list[tuple[str, int]]:
    """(model, batch) pairs to run in process: batch 1 and the batch the server formed."""
    tiny = find(cells, group="ours", ingress=MAIN, protocol="http-binary", concurrency=16)
    big = find(cells, group="batching", ingress=MAIN, model="big", protocol="http-binary")
    points = [("tiny", 1), ("tiny", server_batch(tiny)), ("big", 1), ("big", server_batch(big))]
    return list(dict.fromkeys(points))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def versions(mlserver_version: str) -> str:
    found = []
    for package in ("ray", "onnxruntime", "tritonclient", "aiohttp"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    if mlserver_version:
        found.append(f"mlserver {mlserver_version}")
    return ", ".join(found) + ", perf_analyzer from tritonclient 2.51.0"


def header(*columns: str) -> list[str]:
    """A Markdown table's header and separator rows."""
    return [row(*columns), "|---" * len(columns) + "|"]


def row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def latencies(cell: dict) -> list[str]:
    return [f"{cell[key]:.1f} ms" for key in ("p50_ms", "p90_ms", "p99_ms")]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def rate(cell: dict | None, key: str = "requests_per_s") -> float | None:
    return cell.get(key) if cell and "error" not in cell else None


def describe(cell: dict | None) -> str:
    if not cell:
        return "not run"
    if "error" in cell:
        return f"failed: {cell['error'][:80]!r}"
    text = f"{cell['requests_per_s']:.0f} req/s (p50 {cell['p50_ms']:.1f}, p99 {cell['p99_ms']:.1f} ms)"
    if len(cell.get("runs", [])) > 1:
        text += f", median of {' / '.join(map(str, cell['runs']))}"
    return text + (f", {cell['errors']} errors" if cell.get("errors") else "")


def render(cells: list[dict], limits: dict, env: dict, plot_name: str) -> str:
    lines = [
        "## The request path, measured side by side (generated)",
        "",
        f"`{env['command']}` on {env['date']}: {env['machine']}, Python {env['python']}; {env['versions']}.",
        "Each cell is a closed loop of N concurrent clients for a few seconds after a warm-up, one request = one",
        "row (batch 1), our own generator (`cluster/cli/perf.py`, the same code as `ric perf`) unless it says",
        "perf_analyzer. The load generator runs on the same two cores as the server: absolute numbers are low",
        "and noisy, the ratios (same run, same client) are what to read. The cells behind the floor and",
        "batching ratios (c=16 HTTP binary and gRPC, c=32 batching over HTTP) are measured alternately three",
        "times and the median run kept, every run's req/s shown.",
        "",
    ]
    lines += targets(cells, limits) + [""] + transports(cells) + [""] + [f"![throughput by concurrency]({plot_name})", ""]
    lines += floors(cells) + [""] + limit_table(cells, limits) + [""] + batching(cells) + [""]
    lines += mlserver(cells) + [""] + cross_check(cells) + [""] + open_loop(cells)
    return "\n".join(lines) + "\n"


def targets(cells, limits) -> list[str]:
    def measured(setup: str) -> list[float | None]:
        get = lambda **m: find(cells, ingress=setup, **m)  # noqa: E731
        binary = get(group="ours", protocol="http-binary", concurrency=16)
        on, off = (get(group="batching", model=m, protocol="http-binary") for m in ("big", "big_nobatch"))
        handle_on, handle_off = (get(group="batching", model=m, protocol="handle") for m in ("big", "big_nobatch"))
        return [
            ratio(rate(binary), rate(get(group="floor", protocol="http-binary", concurrency=16))),
            ratio(rate(get(group="ours", protocol="http-json", concurrency=16)), rate(find(cells, group="mlserver",
                                                                                           concurrency=16))),
            ratio(rate(on), rate(off)),
            ratio(rate(handle_on), rate(handle_off)),
            ratio(rate(get(group="ours", protocol="handle", concurrency=16)), rate(binary)),
            ratio(rate(on, "inferences_per_s"), limits.get(("big", server_batch(on)))),
        ]

    names = [
        ("tiny, HTTP binary, c=16: ours / do-nothing Serve, same ingress", 0.9, ">= 0.90"),
        ("tiny, HTTP JSON, c=16: ours / MLServer", 2.0, ">= 2x"),
        ("big MLP, HTTP binary, c=32: dynamic batching on / off", 4.0, ">= 4x"),
        ("big MLP, handles, c=32: dynamic batching on / off", 4.0, ">= 4x"),
        ("tiny, c=16: handle calls / HTTP binary", 3.0, ">= 3x"),
        ("big MLP, HTTP binary, c=32, batching on: ours / in process at the batch the server formed", 0.7, ">= 0.70"),
    ]
    out = ["### Targets (issue 6)", "", f"Measured on `ric serve`'s setup ({SETUPS[MAIN]}), and before colocation "
           f"({SETUPS[BEFORE]}).", "", *header("target", "wanted", "before", "now", "met now")]
    for (name, needed, wanted), before, now in zip(names, measured(BEFORE), measured(MAIN)):
        met = "n/a" if now is None else ("yes" if now >= needed else "**no**")
        out.append(row(name, wanted, fmt_ratio(before), fmt_ratio(now), met))
    return out


def transports(cells) -> list[str]:
    sweep = sorted({c["concurrency"] for c in cells if c.get("group") == "ours" and c.get("ingress") == MAIN
                    and c.get("concurrency")})
    out = [f"### Transports, tiny MLP ({SETUPS[MAIN]})", "",
           "Handles call the model's own deployment from the benchmark's Ray job in both setups.", "",
           *header("transport", *(f"c={c}" for c in sweep))]
    for group, setup, prefix in (("ours", MAIN, "ours"), ("ours", BEFORE, "before colocation"),
                                 ("floor", MAIN, "do-nothing Serve")):
        for protocol, label in SWEEP_LABELS.items():
            cells_text = [describe(find(cells, group=group, ingress=setup, protocol=protocol, concurrency=c))
                          for c in sweep]
            if any(text != "not run" for text in cells_text):
                out.append(row(f"{prefix}, {label}", *cells_text))
    out += ["", "Server-side split per request at c=16 (from our statistics): time queued (waiting for a batch",
            "and for the executor) and computing, and the average batch formed.", "",
            *header("setup", "transport", "queue", "compute", "average batch")]
    for setup in (MAIN, BEFORE):
        for protocol, label in SWEEP_LABELS.items():
            cell = find(cells, group="ours", ingress=setup, protocol=protocol, concurrency=16)
            if cell and cell.get("server"):
                s = cell["server"]
                out.append(row(SETUPS[setup], label, f"{s['queue_ms']:.2f} ms", f"{s['compute_ms']:.2f} ms",
                               f"{s['batch']:.1f}"))
    return out


def floors(cells) -> list[str]:
    out = ["### Ingress setups side by side, tiny MLP, c=16", "",
           *header("setup", "transport", "do-nothing Serve", "ours", "ours / do-nothing")]
    for setup, name in SETUPS.items():
        for protocol in ("http-binary", "grpc"):
            floor = find(cells, group="floor", ingress=setup, protocol=protocol, concurrency=16)
            ours = find(cells, group="ours", ingress=setup, protocol=protocol, concurrency=16)
            out.append(row(name, SWEEP_LABELS[protocol], describe(floor), describe(ours),
                           fmt_ratio(ratio(rate(ours), rate(floor)))))
    return out


def limit_table(cells, limits) -> list[str]:
    out = ["### The limit: the same model in process, same backend", "",
           *header("model", "in process, batch 1", "in process, at the server's batch", "ours",
                   "ours / in process at that batch")]
    for model, cell in (("tiny", find(cells, group="ours", ingress=MAIN, protocol="http-binary", concurrency=16)),
                        ("big", find(cells, group="batching", ingress=MAIN, model="big", protocol="http-binary"))):
        batch = server_batch(cell)
        ours = rate(cell, "inferences_per_s")
        out.append(row(model, f"{limits.get((model, 1), 0):.0f} inf/s",
                       f"{limits.get((model, batch), 0):.0f} inf/s (batch {batch})", f"{ours or 0:.0f} inf/s",
                       fmt_ratio(ratio(ours, limits.get((model, batch))))))
    return out


def batching(cells) -> list[str]:
    out = ["### Dynamic batching, MLP 1024-2048-2048-1000, c=32", "",
           *header("setup", "transport", "dynamic batching", "throughput", "p50", "p90", "p99",
                   "server queue / compute per request", "average batch")]
    for setup in (MAIN, BEFORE):
        for protocol in ("http-binary", "handle"):
            for model, label in (("big_nobatch", "off"), ("big", "on (max 32, delay 2 ms)")):
                cell = find(cells, group="batching", ingress=setup, model=model, protocol=protocol)
                if cell:
                    nan = float("nan")
                    s = cell.get("server") or {"queue_ms": nan, "compute_ms": nan, "batch": nan}
                    runs = cell.get("runs", [])
                    median = f" (median of {' / '.join(map(str, runs))})" if len(runs) > 1 else ""
                    out.append(row(SETUPS[setup], SWEEP_LABELS[protocol], label,
                                   f"{cell['inferences_per_s']:.0f} inf/s{median}", *latencies(cell),
                                   f"{s['queue_ms']:.1f} / {s['compute_ms']:.1f} ms", f"{s['batch']:.1f}"))
    return out


def mlserver(cells) -> list[str]:
    out = ["### MLServer (same ONNX file, onnxruntime, same client), HTTP JSON", "",
           *header("concurrency", "MLServer", "ours", "ours / MLServer", "before colocation / MLServer")]
    for concurrency in (1, 16):
        peer = find(cells, group="mlserver", concurrency=concurrency)
        ours = find(cells, group="ours", ingress=MAIN, protocol="http-json", concurrency=concurrency)
        before = find(cells, group="ours", ingress=BEFORE, protocol="http-json", concurrency=concurrency)
        out.append(row(concurrency, describe(peer), describe(ours), fmt_ratio(ratio(rate(ours), rate(peer))),
                       fmt_ratio(ratio(rate(before), rate(peer)))))
    return out


def cross_check(cells) -> list[str]:
    out = ["### perf_analyzer as a cross-check of our generator, tiny, c=16", "",
           *header("server", "tensors", "our generator", "perf_analyzer", "perf_analyzer / ours")]
    for server, protocol in ((MAIN, "http-binary"), (MAIN, "http-json"), (BEFORE, "http-binary"),
                             ("mlserver", "http-json")):
        pa = find(cells, group="perf_analyzer", ingress=server, protocol=protocol)
        if server == "mlserver":
            ours = find(cells, group="mlserver", concurrency=16)
        else:
            ours = find(cells, group="ours", ingress=server, protocol=protocol, concurrency=16)
        pa_text = describe({**pa, "requests_per_s": pa["inferences_per_s"]}) if pa and "error" not in pa else describe(pa)
        name = "MLServer" if server == "mlserver" else f"ours ({SETUPS[server]})"
        out.append(row(name, SWEEP_LABELS[protocol], describe(ours), pa_text,
                       fmt_ratio(ratio(rate(pa, "inferences_per_s"), rate(ours)))))
    return out


def open_loop(cells) -> list[str]:
    cell = find(cells, group="open-loop", ingress=MAIN)
    if not cell:
        return []
    return ["### Open loop, tiny, HTTP binary, at half the c=16 throughput", "",
            *header("offered", "answered", "p50", "p90", "p99", "errors"),
            row(f"{cell['rate']:.0f} req/s", f"{cell['requests_per_s']:.0f} req/s", *latencies(cell), cell["errors"])]


def plot(cells: list[dict], path: Path) -> None:
    """Requests/s by concurrency per transport, ours solid, the do-nothing floor dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -e '.[bench]')")
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    series = [("ours", MAIN, "-o", "ours"), ("floor", MAIN, "--", "do-nothing Serve"),
              ("ours", BEFORE, ":x", "before colocation")]
    for index, (protocol, label) in enumerate(SWEEP_LABELS.items()):
        for group, setup, style, prefix in series:
            points = sorted((c["concurrency"], c["requests_per_s"]) for c in cells
                            if c.get("group") == group and c.get("ingress") == setup and c.get("protocol") == protocol
                            and c.get("concurrency"))
            if points and not (setup == BEFORE and protocol != "http-binary"):
                ax.plot(*zip(*points), style, color=f"C{index}", label=f"{prefix}, {label}")
    peer = sorted((c["concurrency"], c["requests_per_s"]) for c in cells if c.get("group") == "mlserver")
    if peer:
        ax.plot(*zip(*peer), "s-.", color="gray", label="MLServer, HTTP JSON")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel("requests/s (batch 1)")
    ax.set_title(f"tiny MLP, {SETUPS[MAIN]}")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_section(path: Path, section: str, source: str = "benchmarks/compare.py") -> None:
    """Replace the section that ``source`` generated in ``path`` (or add it at the end), keeping the rest:
    each generating script owns the text between its markers."""
    begin, end = f"<!-- BEGIN {source} -->", f"<!-- END {source} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    path.write_text(text)
