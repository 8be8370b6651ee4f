"""``ric serve``: start (or join) Ray, check that the repository fits, deploy it with progress on the
terminal, tell other Ray jobs how to connect, and stop quickly and completely on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import sys
import time
import traceback
import urllib.request

from cluster.cli import placement
from cluster.cli.arguments import reasons
from cluster.cli.console import open_log, ray_logs_to, stderr_to
from cluster.cli.ingress_setup import own_listeners
from cluster.cli.loopback_grpc import HOST_VARIABLE, SETUP_HOOK, is_loopback
from cluster.cli.metrics_server import MetricsServer
from cluster.cli.ports import DASHBOARD_PORT
from cluster.client import ServerRecord, remove_record, write_record
from cluster.names import APP_NAME
from deployments.private_files import UnsafeFolder

#: How often startup progress is read from Serve.
PROGRESS_INTERVAL_S = 1.0
#: How long the local Ray's processes get to exit on SIGTERM, when ric serve stops, before they are killed.
SWEEP_GRACE_S = 1.0


def become_subreaper() -> None:
    """Adopt this process's orphaned descendants (Linux), so that a HAProxy whose parent replica died with
    the rest of Ray comes back to ric serve, which stops it, instead of keeping the ports."""
    if sys.platform.startswith("linux"):
        PR_SET_CHILD_SUBREAPER = 36
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def stop_descendants() -> list[int]:
    """Terminate every process still below this one (then kill what is left); the pids it had to stop."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=SWEEP_GRACE_S)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=SWEEP_GRACE_S)
    return [child.pid for child in children]


def stop_on_signals() -> None:
    """SIGTERM (docker stop, Kubernetes, systemd) stops ``ric serve`` as Ctrl-C does, and so does SIGINT
    when a shell started it in the background (which ignores SIGINT); set after Ray starts, whose own
    SIGTERM handler only logs it."""
    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop, however many signals the group gets
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


class StartupError(Exception):
    """The application cannot start; the message says why and what to change."""


def start_ray(args: argparse.Namespace, reservations) -> None:
    """Join a cluster at an explicit address, or start a local Ray on 127.0.0.1 sized for the repository."""
    import ray

    if args.address:
        ray.init(address=args.address, configure_logging=False, log_to_driver=False)
        short, nodes = cluster_shortfalls(reservations)
        if short:
            print(f"ric: {placement.describe(short, nodes)}\nric: waiting up to {args.placement_timeout_s:g} s "
                  "for the cluster to add nodes", flush=True)
        return
    keep_token_private()
    # Jobs submitted to this Ray (ray job submit) run `python` from its PATH: make it this environment's.
    os.environ["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    cores = os.cpu_count() or 1
    num_cpus = args.num_cpus if args.num_cpus is not None else placement.local_cpus(reservations, cores)
    if args.num_cpus is None and num_cpus > cores:
        need = sum(r.replicas * r.num_cpus for r in reservations)
        print(f"ric: the repository's models and ingress reserve {need:g} CPUs in all; the local Ray offers "
              f"{num_cpus} logical CPUs on {cores} cores (--num-cpus to choose)", flush=True)
    runtime_env = {}
    # Serve's gRPC listeners follow --host too; with --ingress direct there are none (the ingress replicas'
    # own listeners bind --host themselves)
    if is_loopback(args.host) and args.ingress != "direct":
        os.environ[HOST_VARIABLE] = args.host
        runtime_env = {"worker_process_setup_hook": SETUP_HOOK}
    context = ray.init(address="local", num_cpus=num_cpus, num_gpus=args.num_gpus, _node_ip_address="127.0.0.1",
                       include_dashboard=args.dashboard, dashboard_host="127.0.0.1", dashboard_port=args.dashboard_port,
                       configure_logging=False, log_to_driver=False, runtime_env=runtime_env or None)
    keep_token_private()
    if args.dashboard and not context.dashboard_url:
        args.dashboard = False  # it did not start: Ray's reason is in the log
        print("ric: Ray's dashboard did not start (no `ray job submit`); Ray's reason is in the log", flush=True)
    elif args.dashboard and args.dashboard_port is None:  # 8265, or the next free one
        args.dashboard_port = int(context.dashboard_url.rsplit(":", 1)[1])
        if args.dashboard_port != DASHBOARD_PORT:
            print(f"ric: port {DASHBOARD_PORT} is taken; Ray's dashboard listens on {args.dashboard_port} "
                  "(--dashboard-port to choose)", flush=True)
    short, nodes = cluster_shortfalls(reservations)
    if short:
        raise StartupError(placement.describe(short, nodes))


def keep_token_private() -> None:
    """Keep Ray's token (``~/.ray/auth_token``: whoever reads it may submit jobs, which run as this user) from
    other local users: Ray writes it with the default umask, readable by all. Called before Ray starts (its
    folder becomes 0700, so a token Ray writes there is never readable by others, even for a moment) and
    after (the token itself 0600). Links and other users' files are left as they are."""
    folder = os.path.join(os.path.expanduser("~"), ".ray")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        for path, mode, kind in ((folder, 0o700, os.O_DIRECTORY), (os.path.join(folder, "auth_token"), 0o600, 0)):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | kind)
            try:
                if os.fstat(fd).st_uid == os.geteuid():
                    os.fchmod(fd, mode)
            finally:
                os.close(fd)
    except OSError:
        pass  # no token yet (or authentication off), or a link: nothing more to do


def ray_logs_folder() -> str | None:
    """The local Ray's log folder (replicas, Serve's controller, Ray's daemons); None when unknown."""
    try:
        from ray._private import worker

        return worker._global_node.get_logs_dir_path()
    except Exception:  # a private API: the folder is only named, never needed
        return None


def cluster_shortfalls(reservations) -> tuple[list[placement.Shortfall], list[dict[str, float]]]:
    """What of the application would not fit the joined Ray cluster's live nodes, and those nodes."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return placement.shortfalls(reservations, nodes), nodes


def status_name(status) -> str:
    """A Serve status enum's name (``RUNNING``, ``HEALTHY``, ...)."""
    return str(getattr(status, "value", status))


def deployment_states(app_status) -> dict[str, tuple[str, str]]:
    """Each deployment's Serve status and message."""
    return {name: (status_name(d.status), d.message) for name, d in app_status.deployments.items()}


READY, FAILED = ("HEALTHY", "UPSCALING", "DOWNSCALING"), ("UNHEALTHY", "DEPLOY_FAILED")


def progress_line(states: dict[str, tuple[str, str]]) -> str:
    ready = sorted(n for n, (s, _) in states.items() if s in READY)
    loading = sorted(n for n, (s, _) in states.items() if s not in READY + FAILED)
    failed = sorted(n for n, (s, _) in states.items() if s in FAILED)
    parts = [f"{len(ready)}/{len(states)} deployments ready"]
    if loading:
        parts.append(f"starting: {', '.join(loading)}")
    if failed:
        parts.append(f"failing: {', '.join(failed)}")
    return "ric: " + "; ".join(parts)


def wait_until_running(args: argparse.Namespace) -> None:
    """Print progress while the application starts; raise StartupError when a deployment fails or its
    replicas cannot be placed within the placement timeout."""
    from ray import serve

    started, last = time.monotonic(), ""
    while True:
        app = serve.status().applications.get(APP_NAME)
        if app is None:
            time.sleep(PROGRESS_INTERVAL_S)
            continue
        states = deployment_states(app)
        line = progress_line(states)
        if line != last and states:
            print(line, flush=True)
            last = line
        status = status_name(app.status)
        if status == "RUNNING":
            return
        if status in ("DEPLOY_FAILED", "UNHEALTHY"):
            reasons = [f"  - '{n}': {m}" for n, (s, m) in states.items() if s in FAILED]
            raise StartupError("the application failed to start:\n" + "\n".join(reasons or [f"  {app.message}"]))
        unplaced = {n: m for n, (_, m) in states.items() if "to be scheduled" in m}
        if unplaced and time.monotonic() - started > args.placement_timeout_s:
            lines = [f"  - {message}" for message in unplaced.values()]
            raise StartupError("replicas could not be placed within "
                               f"{args.placement_timeout_s:g} s:\n" + "\n".join(lines) + f"\n  to fix: {placement.HINTS}")
        time.sleep(PROGRESS_INTERVAL_S)


def model_summary(base: str, restrictions) -> str:
    """One line on what the repository index says: models ready, and the others with their reasons (or why
    the index could not be read: the server serves on regardless). ``restrictions``: the restricted APIs,
    whose header the index call carries when its group is restricted."""
    headers = {r.key: r.value for r in restrictions if "model-repository" in r.apis}
    request = urllib.request.Request(f"{base}/v2/repository/index", data=b"{}", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            index = json.load(response)
    except (OSError, ValueError) as exc:
        return f"ric: could not read the repository index at {base}: {exc}"
    ready = [m["name"] for m in index if m.get("state") == "READY"]
    others = [f"{m['name']} ({m.get('state')}: {m.get('reason', '')})" for m in index if m.get("state") != "READY"]
    line = f"ric: {len(ready)} models ready: {', '.join(ready)}"
    return line + (f"; not ready: {'; '.join(others)}" if others else "")


def serve_repository(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from cluster.app import AppArgs, build, reservations
    from cluster.protocol.grpc_service import SERVICER_FUNCTION

    try:
        app_args = AppArgs(repository=args.repository, models=args.models.split(",") if args.models else None,
                           max_request_bytes=args.max_request_bytes, body_timeout_s=args.body_timeout_s,
                           execution_timeout_s=args.execution_timeout_s,
                           response_cache_bytes=args.response_cache_bytes,
                           colocate=args.colocate, colocate_python=args.colocate_python,
                           replica_num_cpus=args.replica_num_cpus,
                           ingress_autoscaling=args.ingress_autoscaling, model_control_mode=args.model_control_mode,
                           restricted_apis=args.restricted_api, server_name=args.server_name,
                           **({"trace_dir": args.trace_dir} if args.trace_dir else {}),
                           payload_log=args.payload_log, http_header_forward_pattern=args.http_header_forward_pattern,
                           grpc_header_forward_pattern=args.grpc_header_forward_pattern, **own_listeners(args))
    except ValueError as exc:  # arguments that only conflict together, e.g. one API group restricted twice
        print(f"ric serve: {reasons(exc)}", file=sys.stderr, flush=True)
        return 2
    try:  # bound first: a busy port fails at once
        metrics = MetricsServer(args.host, args.metrics_port) if args.metrics_port else None
    except OSError as exc:
        print(f"ric serve: cannot listen on {args.host}:{args.metrics_port} for metrics ({exc.strerror}); "
              "choose another --metrics-port, or 0 for none", file=sys.stderr, flush=True)
        return 2
    try:
        args.log = open_log()
    except UnsafeFolder as exc:
        print(f"ric serve: cannot write its log: {exc}", file=sys.stderr, flush=True)
        return 2
    ray_logs_to(args.log)
    become_subreaper()
    code = 1
    print(f"ric: Ray's and Serve's messages go to {args.log}", flush=True)
    try:
        start_ray(args, reservations(app_args))
        if ray_logs_folder() and not args.address:
            print(f"ric: the replicas' logs go to {ray_logs_folder()}", flush=True)
        stop_on_signals()
        if args.ingress == "direct":  # the ingress replicas listen themselves; handles need no proxy
            serve.start(proxy_location="Disabled")
        else:
            serve.start(http_options={"host": args.host, "port": args.http_port},
                        grpc_options={"port": args.grpc_port, "grpc_servicer_functions": [SERVICER_FUNCTION]})
        serve.run_many([serve.RunTarget(build(app_args), name=APP_NAME, route_prefix="/",
                                        external_scaler_enabled=True)], wait_for_applications_running=False)
        wait_until_running(args)
        base = f"http://{args.host}:{args.http_port}"
        print(model_summary(base, app_args.restricted_apis), flush=True)
        context = ray.get_runtime_context()
        record = ServerRecord(address=context.gcs_address, node_ip=ray.util.get_node_ip_address(),
                              auth_mode=os.environ.get("RAY_AUTH_MODE", "disabled"), app=APP_NAME, http=base,
                              grpc=f"{args.host}:{args.grpc_port}", pid=os.getpid())
        write_record(record)
        print(f"ric: serving {app_args.repository} at {base}/v2 and gRPC {args.host}:{args.grpc_port} "
              f"(health: {base}/v2/health/ready, index: POST {base}/v2/repository/index; ingress: "
              f"{args.ingress})", flush=True)
        if metrics is not None:
            metrics.start(APP_NAME)
            print(f"ric: Prometheus metrics at http://{args.host}:{args.metrics_port}/metrics", flush=True)
        print("ric: from another Ray job or shell on this machine: from cluster.client import connect; "
              "connect().model(\"<model>\").infer({...})", flush=True)
        if args.dashboard and not args.address:
            print(f"ric: Ray dashboard and job submission: http://127.0.0.1:{args.dashboard_port} "
                  f"(RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:{args.dashboard_port} -- ...)",
                  flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("ric: shutting down", flush=True)
        code = 0
    except StartupError as exc:
        print(f"ric: {exc}", file=sys.stderr, flush=True)
    except Exception:  # stop what was started, then say what went wrong
        traceback.print_exc()
    finally:
        stop(args)
    if not args.address:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def stop(args: argparse.Namespace) -> None:
    """Stop what ``ric serve`` started, bounded in time: on a cluster it joined, its application; a local Ray
    as a whole, by stopping every process below this one (Ray's daemons and workers, Serve's HAProxy).

    A local Ray is stopped neither through ``serve.shutdown()`` nor ``ray.shutdown()``: Serve's graceful
    shutdown took 10 s even with a 1 s ingress drain (31-33 s with Serve's default), and ``ray.shutdown()``
    waited 8 s on timeouts when the signal went to the whole process group (docker stop, systemd), whose
    raylet then stops answering; the server's every process is about to go, and requests still in flight
    are cut. The caller then leaves with ``os._exit``, as Ray's own exit hook would call ``ray.shutdown()``.
    """
    import ray
    from ray import serve

    started = time.monotonic()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    remove_record(os.getpid())
    if args.address:
        try:
            if ray.is_initialized():
                serve.delete(APP_NAME)  # a shared cluster keeps Serve and its other applications
        finally:
            ray.shutdown()
        return
    folder = os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE", "")
    if os.path.basename(folder).startswith("ric-haproxy-"):  # first: nothing below may cut the stop short
        shutil.rmtree(folder, ignore_errors=True)
    try:
        if getattr(args, "log", None):
            stderr_to(args.log)  # Ray's core worker complains as its daemons go
    finally:
        left = stop_descendants()
    print(f"ric: stopped in {time.monotonic() - started:.1f} s ({len(left)} processes)", flush=True)
