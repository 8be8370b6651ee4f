"""The README's ``serve deploy`` section as a user runs it: its bash block in a clean shell (a HOME of its
own), on free ports and with ``ray start`` kept in the foreground (``--block``, in the background of that
shell) so that the test stops what it started by process: ``ray stop`` would stop every Ray of this user
on the machine. The Ray it starts stays on 127.0.0.1, its token is the user's alone, and the application
serves the example repository."""

from __future__ import annotations

import re
import stat
import subprocess
import threading

import psutil
import requests
import yaml

from tests.conftest import REPO_ROOT
from tests.integration.conftest import BIN, clean_env, free_port, wait_for
from tests.integration.test_cli_readme import readme_blocks


def test_readme_serve_deploy_block_starts_a_loopback_cluster_that_serves(tmp_path):
    (block,) = readme_blocks("bash", "### 4. `serve deploy`", "## Documentation")
    gcs, dashboard, http, grpc = (free_port() for _ in range(4))
    config = yaml.safe_load((REPO_ROOT / "configs" / "serve.yaml").read_text())
    args = config["applications"][0]["args"]
    args["http_port"], args["grpc_port"] = http, grpc  # the shipped file, on free ports
    args["models"] = ["simple"]
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    start = "ray start --head --node-ip-address=127.0.0.1"
    deploy = "serve deploy configs/serve.yaml"
    assert start in block and deploy in block, block
    script = block.replace(start, f"{start} --port {gcs} --dashboard-port {dashboard} --block &\n"
                                  f"until curl -sf -o /dev/null 127.0.0.1:{dashboard}; do sleep 1; done")
    script = script.replace(deploy, f"serve deploy {tmp_path / 'serve.yaml'} -a http://127.0.0.1:{dashboard}")
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(home, PATH=f"{BIN}:/usr/bin:/bin")  # the venv activated, as the README's commands assume
    shell = subprocess.Popen(["bash", "-c", "set -e\n" + script + "\nwait"], env=env, cwd=REPO_ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    below: list[psutil.Process] = []
    try:
        threading.Thread(target=lambda: lines.extend(shell.stdout), daemon=True).start()
        wait_for(lambda: requests.get(f"http://127.0.0.1:{http}/v2/health/ready", timeout=5).ok or
                 shell.poll() is not None, timeout_s=300, what=lambda: "the application: " + "".join(lines)[-3000:])
        assert shell.poll() is None, "".join(lines)[-3000:]
        body = {"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": list(range(16))}
                           for n in ("INPUT0", "INPUT1")]}
        answer = requests.post(f"http://127.0.0.1:{http}/v2/models/simple/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        output = re.sub(r"\x1b\[[0-9;]*m", "", "".join(lines))  # ray start colours its words
        assert re.search(r"Local node IP: 127\.0\.0\.1\b", output), output[-3000:]
        assert stat.S_IMODE((home / ".ray" / "auth_token").stat().st_mode) == 0o600
    finally:  # every process the shell started, as `ray stop` would but for this cluster's alone
        try:
            below = [psutil.Process(shell.pid), *psutil.Process(shell.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        for process in below:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(below, timeout=10)
        for process in alive:  # `ray start --block` and some of Ray's daemons outlast SIGTERM
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        shell.wait(timeout=60)
