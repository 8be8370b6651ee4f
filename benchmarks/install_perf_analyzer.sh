#!/usr/bin/env bash
# Installs Triton's perf_analyzer into .venv-perf-analyzer/ (idempotent), for the protocol smoke test and
# the benchmarks. The PyPI package "perf-analyzer" is an empty placeholder; the newest binary that runs on
# Debian 12 (glibc 2.36) ships inside tritonclient[all]==2.51.0. It links libcudart.so.12 (from
# nvidia-cuda-runtime-cu12, no GPU needed) and libb64.so.0d (Debian's libb64-0d).
# Never fails the caller: without it the smoke test skips and says why.
set -u
cd "$(dirname "$0")/.."
venv=.venv-perf-analyzer
if [ -x "$venv/bin/perf_analyzer" ] && [ -n "$(ls "$venv"/lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12 2>/dev/null)" ]; then
  exit 0
fi
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)  # /sbin is not on a minimal PATH
if ! "$ldconfig" -p 2>/dev/null | grep -q libb64.so.0d; then
  if [ "$(id -u)" = 0 ]; then
    { apt-get install -y -q libb64-0d || { apt-get update -q && apt-get install -y -q libb64-0d; }; } >/dev/null 2>&1 \
      || echo "install_perf_analyzer: could not install libb64-0d with apt-get" >&2
  else
    echo "install_perf_analyzer: libb64-0d is missing; install it with: sudo apt-get install libb64-0d" >&2
  fi
fi
python3 -m venv "$venv" && "$venv/bin/pip" install -q "tritonclient==2.51.0" nvidia-cuda-runtime-cu12 \
  || echo "install_perf_analyzer: pip install failed; the perf_analyzer smoke test will skip" >&2
exit 0
