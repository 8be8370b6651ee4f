"""The HAProxy launcher of ``ric serve``: it runs the binary on a copy of Serve's config with a total header
time, ric's 503 page and its stats pages on loopback, as the process Serve started (exec). ``/bin/echo`` stands in for HAProxy and prints
the arguments it got; tests/integration/test_cli_serve.py checks a real HAProxy behind a real Serve."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cluster.cli.haproxy import (
    CONFIG_COPY_PREFIX, HUGE_LENGTH_RULE, MAX_CLIENT_CONNECTIONS, UNAVAILABLE_PAGE, client_limit, missed, ric_config,
    write_launcher,
)

SERVE_CONFIG = """global
    maxconn 4096
defaults
    mode http
    timeout client 60s
    errorfile 502 /tmp/haproxy-serve/500.http
    errorfile 503 /tmp/haproxy-serve/500.http
    errorfile 504 /tmp/haproxy-serve/500.http
frontend prometheus
    bind :9101
    mode http
frontend http_frontend
    bind 127.0.0.1:8000
listen stats
  bind *:8404
  stats enable
"""


def test_the_copy_bounds_header_time_and_answers_haproxy_errors_with_ric_page():
    copy = ric_config(SERVE_CONFIG, "/ric/503.http", 7)
    assert copy.splitlines()[2:4] == ["defaults", "    timeout http-request 7s"]
    assert copy.count("errorfile") == 3 and copy.count("errorfile 50") == copy.count("/ric/503.http") == 3
    assert "500.http" not in copy
    assert "frontend http_frontend\n    bind 127.0.0.1:8000\n" + client_limit(MAX_CLIENT_CONNECTIONS) + HUGE_LENGTH_RULE in copy
    assert "sc0_conn_cur gt 256" in client_limit(256) and client_limit(0) == ""  # 0: no bound
    assert "conn_cur" not in ric_config(SERVE_CONFIG, "/ric/503.http", 7, 0)
    # the stats page and the exporter carry no API, but nothing off the node should read them either
    assert "frontend prometheus\n    bind 127.0.0.1:9101\n" in copy and "listen stats\n  bind 127.0.0.1:8404\n" in copy
    assert missed(copy) == [] and missed(SERVE_CONFIG) == [  # a template that changed is said in HAProxy's log
        "'frontend prometheus' still listens on every interface", "'listen stats' still listens on every interface",
        "no Content-Length bound in 'frontend http_frontend'"]


def test_a_config_without_defaults_is_refused():
    with pytest.raises(ValueError, match="no 'defaults' section"):
        ric_config("global\n    maxconn 1\n", "/ric/503.http", 7)


def launch(folder: Path, config: str) -> subprocess.CompletedProcess:
    (folder / "node").mkdir()
    (folder / "node" / "haproxy.cfg").write_text(config)
    launcher = write_launcher(str(folder), "/bin/echo", 3)
    return subprocess.run([launcher, "-db", "-f", str(folder / "node" / "haproxy.cfg"), "-sf", "123"],
                          capture_output=True, text=True, timeout=60, check=True)


def test_the_launcher_runs_the_binary_on_the_copy_with_serve_arguments(tmp_path):
    done = launch(tmp_path, SERVE_CONFIG)
    copy = tmp_path / "node" / (CONFIG_COPY_PREFIX + "haproxy.cfg")
    assert done.stdout.split() == ["-db", "-f", str(copy), "-sf", "123"]
    assert (tmp_path / "node" / "haproxy.cfg").read_text() == SERVE_CONFIG  # Serve's own file untouched
    assert copy.read_text() == ric_config(SERVE_CONFIG, str(tmp_path / "503.http"), 3)
    assert (tmp_path / "503.http").read_bytes() == UNAVAILABLE_PAGE
    assert not done.stderr


def test_a_config_the_launcher_cannot_change_runs_as_serve_wrote_it_and_says_so(tmp_path):
    done = launch(tmp_path, "global\n    maxconn 1\n")
    assert done.stdout.split() == ["-db", "-f", str(tmp_path / "node" / "haproxy.cfg"), "-sf", "123"]
    assert "HAProxy runs on Serve's config unchanged: Serve's HAProxy config has no 'defaults' section" in done.stderr
