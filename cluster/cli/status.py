"""``ric status``: what a running application is doing, per model, in one screen (or ``--json``).

For each model (and ensemble): Serve's status, versions with statistics, replicas per node, GPUs per
replica, the autoscaling bounds and target, requests in its replicas (queued for a batch or running, as
last reported), and, measured over a short window (``--window``, default 5 s),
requests/s, p50 / p99 latency in the replica and mean queueing; then whatever is pending, with Serve's
reason (replicas waiting for resources, failing constructors). It joins the cluster like
:func:`cluster.client.connect` and reads Serve's own details and the application's statistics collector.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from typing import Any

from cluster.cli.arguments import positive
from cluster.cli.serve import status_name
from cluster.names import MODEL_APP_SEPARATOR, RESERVED_NAMES, STATISTICS_NAME, SYNC_NAME
from deployments.observability.statistics import ShadowStatistics, VersionStatistics, percentile_ns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray address (default: the running ric serve's)")
    parser.add_argument("--app", help="Serve application (default: the running ric serve's, else 'ric')")
    parser.add_argument("--window", type=positive(float), default=5.0,
                        help="seconds over which request rates and latencies are measured (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def serve_details() -> dict[str, Any]:
    # Serve's full per-replica details (node, state) have no public Python call, only the dashboard's REST
    # route, which asks the controller through this same client.
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_details()


def collector_snapshot(app: str) -> dict[str, dict[int, VersionStatistics]]:
    from ray import serve

    return serve.get_deployment_handle(STATISTICS_NAME, app_name=app).merged.remote().result(timeout_s=30)


def window_numbers(before: VersionStatistics | None, after: VersionStatistics, seconds: float) -> dict[str, Any]:
    """Requests/s, p50/p99 and mean queueing over the window between two cumulative snapshots."""
    before = before or VersionStatistics()
    requests = after.success.count - before.success.count
    failures = after.fail.count - before.fail.count
    latency = [a - b for a, b in zip(after.latency, before.latency)]
    queued = after.queue.count - before.queue.count
    p50, p99 = percentile_ns(latency, 0.5), percentile_ns(latency, 0.99)
    return {
        "requests_per_s": round(requests / seconds, 2),
        "failures_per_s": round(failures / seconds, 2),
        "p50_ms": None if p50 is None else round(p50 / 1e6, 2),
        "p99_ms": None if p99 is None else round(p99 / 1e6, 2),
        "queue_ms": round((after.queue.ns - before.queue.ns) / queued / 1e6, 2) if queued else None,
        "requests_total": after.success.count,
        "shadow": {candidate: shadow_numbers(counts) for candidate, counts in sorted(after.shadow.items())},
        "drift": {key: {**window.scores(), "values": window.count, "threshold": window.threshold,
                        "mean_std": window.mean_std(), "median": window.quantile(0.5)}
                  for key, window in sorted(after.drift.items()) if window.count},
    }


def shadow_numbers(counts: ShadowStatistics) -> dict[str, Any]:
    """A shadow candidate's totals: outcomes, the share that agreed of those answered, its p99."""
    answered = counts.agreed + counts.differed
    p99 = percentile_ns(counts.latency, 0.99)
    return {"agreed": counts.agreed, "differed": counts.differed, "failed": counts.failed, "dropped": counts.dropped,
            "agreement": round(counts.agreed / answered, 4) if answered else None,
            "p99_ms": None if p99 is None else round(p99 / 1e6, 2)}


def collect(app: str, window: float) -> dict[str, Any]:
    """The status of application ``app`` and the models loaded later beside it, as one JSON-able dict."""
    from ray import serve

    first = collector_snapshot(app)
    started = time.monotonic()
    time.sleep(window)
    second = collector_snapshot(app)
    in_flight = serve.get_deployment_handle(STATISTICS_NAME, app_name=app).in_flight.remote().result(timeout_s=30)
    seconds = time.monotonic() - started
    traffic = serve.get_deployment_handle(SYNC_NAME, app_name=app).status.remote().result(timeout_s=30)["traffic"]
    details = serve_details()
    models, pending = {}, []
    for app_name, app_details in sorted(details.get("applications", {}).items()):
        if app_name != app and not app_name.startswith(app + MODEL_APP_SEPARATOR):
            continue
        for name, deployment in sorted(app_details.get("deployments", {}).items()):
            config = deployment.get("deployment_config", {})
            replicas = [r for r in deployment.get("replicas", [])]
            running = Counter(r.get("node_ip", "?") for r in replicas if r.get("state") == "RUNNING")
            starting = sum(1 for r in replicas if r.get("state") != "RUNNING")
            state = status_name(deployment.get("status"))
            message = deployment.get("message", "")
            if message:
                pending.append({"deployment": name, "application": app_name, "status": state, "reason": message})
            if name in RESERVED_NAMES:
                continue
            autoscaling = config.get("autoscaling_config")
            versions = second.get(name, {})
            models[name] = {
                "application": app_name,
                "status": state,
                "replicas_by_node": dict(running),
                "replicas_starting": starting,
                "target_replicas": deployment.get("target_num_replicas"),
                "in_flight": in_flight.get(name, 0),
                "gpus_per_replica": config.get("ray_actor_options", {}).get("num_gpus", 0),
                "autoscaling": None if not autoscaling else {
                    "min_replicas": autoscaling.get("min_replicas"), "max_replicas": autoscaling.get("max_replicas"),
                    "target_ongoing_requests": autoscaling.get("target_ongoing_requests"),
                },
                "versions": {str(v): window_numbers(first.get(name, {}).get(v), stats, seconds)
                             for v, stats in sorted(versions.items())},
                "traffic": traffic.get(name),
            }
    return {"application": app, "window_s": round(seconds, 1), "models": models, "pending": pending}


def render(status: dict[str, Any]) -> str:
    """Plain text that fits a terminal."""
    header = ("MODEL", "STATUS", "REPLICAS (node: n)", "GPU", "AUTOSCALING", "IN FLIGHT", "VER", "WEIGHT", "REQ/S",
              "P50 ms", "P99 ms", "QUEUE ms", "SHADOW", "DRIFT (PSI)")
    rows = [header]
    dash = lambda value: "-" if value in (None, 0, "") else f"{value:g}" if isinstance(value, float) else str(value)  # noqa: E731
    for name, model in status["models"].items():
        nodes = ", ".join(f"{node}: {n}" for node, n in model["replicas_by_node"].items()) or "none"
        if model["replicas_starting"]:
            nodes += f" (+{model['replicas_starting']} starting)"
        scaling = model["autoscaling"]
        scaling = (f"{scaling['min_replicas']}..{scaling['max_replicas']} at {scaling['target_ongoing_requests']:g}, "
                   f"target {model['target_replicas']}") if scaling else "-"
        versions = model["versions"] or {"-": {}}
        weights = (model.get("traffic") or {}).get("weights") or {}
        for i, (version, numbers) in enumerate(versions.items()):
            weight = f"{weights.get(version, 0) / sum(weights.values()):.0%}" if weights else "-"
            rows.append((name if i == 0 else "", model["status"] if i == 0 else "", nodes if i == 0 else "",
                         dash(model["gpus_per_replica"]) if i == 0 else "", scaling if i == 0 else "",
                         str(model["in_flight"]) if i == 0 else "", version, weight,
                         dash(numbers.get("requests_per_s")), dash(numbers.get("p50_ms")),
                         dash(numbers.get("p99_ms")), dash(numbers.get("queue_ms")),
                         _shadow_cell(numbers.get("shadow") or {}), _drift_cell(numbers.get("drift") or {})))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = [f"application '{status['application']}', rates over the last {status['window_s']:g} s"]
    lines += ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if status["pending"]:
        lines.append("pending:")
        lines += [f"  {p['deployment']} ({p['status']}): {p['reason']}" for p in status["pending"]]
    return "\n".join(lines)


def _shadow_cell(shadow: dict[str, dict[str, Any]]) -> str:
    """Each candidate's agreement over the copies it answered, with its failures and drops."""
    cells = []
    for candidate, n in shadow.items():
        agreement = "-" if n["agreement"] is None else f"{n['agreement']:.1%}"
        cells.append(f"{candidate.rstrip(':')} agreed {agreement} of {n['agreed'] + n['differed']}"
                     + (f", {n['failed']} failed" if n["failed"] else "")
                     + (f", {n['dropped']} dropped" if n["dropped"] else ""))
    return "; ".join(cells) or "-"


def _drift_cell(drift: dict[str, dict[str, Any]]) -> str:
    """The feature that has drifted most, and how many pass their threshold."""
    if not drift:
        return "-"
    key, worst = max(drift.items(), key=lambda item: item[1]["psi"])
    over = sum(1 for n in drift.values() if n["psi"] > n["threshold"])
    return f"{key} {worst['psi']:.3f}" + (f", {over} of {len(drift)} over threshold" if over else "")


def main(args: argparse.Namespace) -> int:
    import ray.serve  # noqa: F401  (it sets up its logger on import; quieted: the table is all ric status prints)

    from cluster.client import connect

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        client = connect(args.address, args.app, ray_logging_level=logging.WARNING)
    except ConnectionError as exc:
        print(f"ric status: {exc}")
        return 2
    status = collect(client.app, args.window)
    print(json.dumps(status, indent=1) if args.json else render(status))
    return 0
