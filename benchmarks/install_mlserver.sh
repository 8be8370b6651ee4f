#!/usr/bin/env bash
# Installs MLServer (the V2-protocol peer of the benchmarks) into .venv-mlserver/ (idempotent). It has no
# ONNX runtime of its own: benchmarks/peers.py writes a small MLModel that runs onnxruntime.
set -eu
cd "$(dirname "$0")/.."
venv=.venv-mlserver
if [ -x "$venv/bin/mlserver" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q "mlserver==1.7.1" onnxruntime
