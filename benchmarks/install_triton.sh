#!/usr/bin/env bash
# Installs NVIDIA Triton (the real server: a benchmark peer and the oracle ric is checked against) into
# .venv-triton/ (idempotent). The tritonserver binary ships inside nvidia-pytriton==0.7.0 (Triton 2.5x, CPU
# only here), with every library it links in site-packages/nvidia_pytriton.libs (found through its RPATH).
# Its Python backend needs the stub for the Python it embeds: the stub links the system's
# libpython3.11.so.1.0 and imports the system's numpy (Debian's python3-numpy), not this venv's.
# benchmarks/triton.py runs it.
set -eu
cd "$(dirname "$0")/.."
venv=.venv-triton
system_python=/usr/bin/python3.11  # the Python of the libpython3.11.so.1.0 that ldconfig finds

installed() {
  [ -x "$venv"/lib/python3*/site-packages/pytriton/tritonserver/backends/python/triton_python_backend_stub ] \
    && "$system_python" -c 'import numpy' 2>/dev/null
}
if installed; then
  exit 0
fi

ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)  # /sbin is not on a minimal PATH
if ! "$ldconfig" -p | grep -q 'libpython3\.11\.so\.1\.0' || [ ! -x "$system_python" ]; then
  echo "install_triton: Triton's Python backend stub needs the system's Python 3.11 ($system_python and" \
       "libpython3.11.so.1.0); install them with: apt-get install python3.11 libpython3.11" >&2
  exit 1
fi
if ! "$system_python" -c 'import numpy' 2>/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "install_triton: $system_python has no numpy, which Triton's Python backend stub imports;" \
         "install it with: sudo apt-get install python3-numpy" >&2
    exit 1
  fi
  { apt-get install -y -q python3-numpy || { apt-get update -q && apt-get install -y -q python3-numpy; }; } >/dev/null
  "$system_python" -c 'import numpy'
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q "nvidia-pytriton==0.7.0"
server=$(echo "$venv"/lib/python3*/site-packages/pytriton/tritonserver)
cp "$server/python_backend_stubs/3.11/triton_python_backend_stub" "$server/backends/python/"
installed
