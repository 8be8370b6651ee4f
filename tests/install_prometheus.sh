#!/usr/bin/env bash
# Installs a Prometheus server (Debian's prometheus package) for the test that scrapes `ric serve` with a
# real Prometheus and queries it. Idempotent; needs root (or apt-get through sudo without a password).
# Never fails the caller: without it that test skips and says why. apt-get starts no service here (the
# package's init scripts are not run without an init system; where they are, the tests start their own).
set -u
command -v prometheus >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ]; then
  apt=(apt-get)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  apt=(sudo -n apt-get)
else
  echo "install_prometheus: not root and no password-less sudo; install it with: sudo apt-get install prometheus" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
{ "${apt[@]}" install -y -q --no-install-recommends prometheus \
  || { "${apt[@]}" update -q && "${apt[@]}" install -y -q --no-install-recommends prometheus; }; } >/dev/null 2>&1 \
  || echo "install_prometheus: apt-get could not install prometheus; the Prometheus test will skip" >&2
exit 0
