"""The README's ``make serve``: it passes ric serve's flags through (``ARGS``) and installs only when the
install is stale (pyproject.toml or the Makefile changed since it last succeeded), asked of make itself
(``make -n``: what it would run)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned(venv, *arguments: str) -> list[str]:
    done = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), f"VENV={venv}", *arguments],
                          capture_output=True, text=True, timeout=60, check=True)
    return [line.rstrip() for line in done.stdout.splitlines() if not line.startswith("make")]


def test_make_serve_installs_only_when_stale_and_passes_arguments(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    plan = planned(venv, "serve")  # no stamp: the install runs first, and leaves one
    assert any("pip install" in line for line in plan), plan
    (stamp,) = [line.split()[1] for line in plan if line.startswith("touch ")]
    assert plan[-1] == f"{venv}/bin/ric serve"
    Path(stamp).touch()
    assert planned(venv, "serve", "ARGS=--models simple --http-port 9000") == [
        f"{venv}/bin/ric serve --models simple --http-port 9000"]
    assert any("pip install" in line for line in planned(venv, "serve", "TORCH=torch>=2.1"))  # another torch
    os.utime(stamp, (0, 0))  # older than pyproject.toml: the install runs again
    assert any("pip install" in line for line in planned(venv, "serve"))
