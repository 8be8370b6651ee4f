"""The README's snippets as a user runs them, against a ``ric serve`` started as ``make serve`` starts it
(the example repository, every default but the ports): each Python block pasted alone into a clean shell
(no RAY_* variables; a HOME of its own), the handle snippet also submitted as a Ray job, and every curl
block in ``bash``."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO_ROOT
from tests.integration.conftest import BIN, clean_env, ric_serving


@pytest.fixture(scope="module")
def ric(home, dashboard_port):
    with ric_serving(home, "--dashboard-port", str(dashboard_port)) as server:
        yield server


def readme_blocks(language: str, start: str | None = None, end: str | None = None) -> list[str]:
    """The README's ```<language> blocks, each as written; only those between the headings ``start`` and
    ``end`` when given."""
    readme = (REPO_ROOT / "README.md").read_text()
    readme = readme[readme.index(start) if start else 0:readme.index(end) if end else len(readme)]
    return [part.split("```", 1)[0] for part in readme.split(f"```{language}\n")[1:]]


def readme_handle_snippet() -> str:
    """The first Python block of the README's section on other Ray jobs, as written."""
    return readme_blocks("python", "### 3. From another Ray job")[0]


def readme_grpc_snippets(grpc_port: int) -> list[str]:
    """The README's gRPC section's Python blocks (a client with a streaming call, then shared memory), each
    as written but the port."""
    blocks = readme_blocks("python", "### 2. gRPC", "### 3. From another Ray job")
    return [block.replace("127.0.0.1:8001", f"127.0.0.1:{grpc_port}") for block in blocks]


def assert_simple_answer(output: str) -> None:
    assert "'OUTPUT0': array([[ 0,  2,  4,  6,  8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]]" in output, output
    assert "'OUTPUT1': array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]" in output, output


def test_a_first_run_prints_only_what_a_user_needs(ric, home):
    """ric's lines only, however Ray and Serve start: theirs go to a private log, without colour codes;
    Ray's token is the user's alone."""
    assert all(line.startswith("ric: ") for line in ric.output.splitlines()), ric.output
    assert re.search(r"ric: \d+/\d+ deployments ready", ric.output) and "ric: serving example at" in ric.output
    log = Path(re.search(r"(?m)^ric: Ray's and Serve's messages go to (\S+)$", ric.output)[1])
    assert log.parent == home / ".ric" / "logs" and stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "Started a local Ray instance" in log.read_text() and "\x1b[" not in log.read_text()
    assert stat.S_IMODE((home / ".ray").stat().st_mode) == 0o700  # Ray writes its token 0644 into it
    assert stat.S_IMODE((home / ".ray" / "auth_token").stat().st_mode) == 0o600


def test_readme_grpc_and_shared_memory_snippets_in_a_clean_shell(ric, home):
    """Each Python block of the README's gRPC section in a clean shell of its own, as a user pastes one
    block: a block that leans on another's imports or client fails here."""
    blocks = readme_grpc_snippets(ric.grpc_port)
    assert len(blocks) >= 2, blocks
    output = ""
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], env=clean_env(home), capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, (block, done.stderr[-3000:])
        output += done.stdout
    assert "[[16 18 20 22 24 26 28 30 32 34 36 38 40 42 44 46]]" in output, output
    assert output.count("[b'") == 8, output  # text_generator's eight tokens, one response each
    assert not Path("/dev/shm/in").exists()


def test_readme_http_snippet_in_a_clean_shell(ric, home):
    """The Python block of the README's HTTP section, pasted alone into a clean shell (but the port)."""
    (block,) = readme_blocks("python", "### 1. HTTP", "### 2. gRPC")
    done = subprocess.run([sys.executable, "-c", block.replace("127.0.0.1:8000", f"127.0.0.1:{ric.http_port}")],
                          env=clean_env(home), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'model_stats'" in done.stdout and "'name': 'mlp'" in done.stdout, done.stdout


def test_readme_curl_blocks_in_a_clean_shell(ric, home):
    """The README's curl commands as a user pastes them into a new shell: every ```bash block of the README
    that contains ``curl`` runs in ``bash -c`` with ``set -e -o pipefail`` and a clean environment, as
    written but the ports (``localhost:8000`` / ``8001`` / ``8002``, HTTP / gRPC / metrics, become the module
    server's). Which blocks run: a bash block runs here if and only if it contains ``curl``; the others
    install or start things (``make``; ``ray start`` and ``serve deploy``) or submit a job
    (test_readme_snippet_as_a_ray_job runs that one), and are not meant for this server.

    Every URL a block calls needs a check below of what its answer shows in the block's output; a URL
    without one fails the test (add its check). The metrics line must count the block's own inference:
    the count it shows is compared with what the statistics (current when read) said before the block."""
    ports = {"8000": ric.http_port, "8001": ric.grpc_port, "8002": ric.metrics_port}

    def simple_successes() -> int:
        (row,) = requests.get(f"{ric.url}/v2/models/simple/versions/1/stats", timeout=30).json()["model_stats"]
        return row["inference_stats"]["success"]["count"]

    def streamed(block: str, output: str, before: int) -> bool:
        asked = re.search(r'"MAX_TOKENS":\s*(\d+)', block)
        events = [json.loads(event) for event in re.findall(r"data: (\{[^\n]*\})", output)]
        tokens = [event for event in events if event.get("model_name") == "text_generator" and "TOKEN" in event]
        return len(tokens) == (int(asked[1]) if asked else 8) and not any("error" in event for event in events)

    def counted(block: str, output: str, before: int) -> bool:
        found = re.search(r'nv_inference_request_success\{model="simple",version="1"\} (\d+)', output)
        return found is not None and int(found[1]) >= before + ("/v2/models/simple/infer" in block)

    checks = {
        "/v2/health/ready": lambda block, output, before: re.search(r"(?m)^200$", output) is not None,
        "/v2/repository/index": lambda block, output, before: re.search(r'"name":\s*"simple"', output) is not None,
        "/v2/models/mlp/config": lambda block, output, before: re.search(r'"name":\s*"mlp"', output) is not None,
        "/v2/models/simple/infer": lambda block, output, before: (
            re.search(r'"name":\s*"OUTPUT0"', output) is not None),
        "/v2/models/text_generator/generate_stream": streamed,
        "/metrics": counted,
    }
    blocks = [block for block in readme_blocks("bash") if "curl" in block]
    assert blocks, "the README has no curl blocks"
    for block in blocks:
        urls = re.findall(r"localhost:800[012](/[^\s'\"]*)", block)
        assert urls and not [url for url in urls if url not in checks], (urls, block)
        script = re.sub(r"localhost:(800[012])", lambda port: f"127.0.0.1:{ports[port[1]]}", block)
        before = simple_successes()
        done = subprocess.run(["bash", "-c", "set -e -o pipefail\n" + script], env=clean_env(home),
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, (block, done.stdout[-3000:], done.stderr[-3000:])
        failed = [url for url in urls if not checks[url](block, done.stdout, before)]
        assert not failed, (failed, block, done.stdout[-5000:])


def test_readme_handle_snippet_in_a_clean_shell(ric, home):
    done = subprocess.run([sys.executable, "-c", readme_handle_snippet()], env=clean_env(home),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_simple_answer(done.stdout)


def test_readme_snippet_as_a_ray_job(ric, home, dashboard_port, tmp_path):
    (tmp_path / "my_job.py").write_text(readme_handle_snippet())
    done = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard_port}", "--working-dir", ".",
         "--", "python", "my_job.py"],
        env=clean_env(home, RAY_AUTH_MODE="token"), cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert_simple_answer(done.stdout)
