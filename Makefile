# The two commands of the README, and `make bench` (the benchmark comparison). Everything installs into the
# project's own virtual environment, .venv (a stock Debian/Ubuntu Python refuses pip installs outside one,
# PEP 668); `source .venv/bin/activate` puts `ric` on PATH afterwards. Torch is pinned to the CPU build that
# this project's machines keep on disk; elsewhere set TORCH, e.g. make test TORCH='torch>=2.1'.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN = $(VENV)/bin

# The install runs again only when pyproject.toml or this file changed since it last succeeded, or TORCH or
# PYTHON differ (the stamp's name holds their checksum); `rm .venv/.ric-installed-*` forces it.
STAMP = $(VENV)/.ric-installed-$(shell printf '%s' "$(TORCH) $(PYTHON)" | cksum | cut -d' ' -f1)

.PHONY: install test serve bench

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || { echo "make: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2; exit 1; }

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@echo "make: installing ric, torch and the test tools into $(VENV) (a few minutes the first time)"
	$(BIN)/python -m pip install --progress-bar on -e '.[test,torch]' '$(TORCH)'
	bash benchmarks/install_perf_analyzer.sh
	@touch $(STAMP)

install: $(STAMP)

test: install
	bash tests/install_prometheus.sh
	bash benchmarks/install_triton.sh || echo "make: real Triton is not installed; the differential tests skip"
	$(BIN)/python -m pytest

# make serve ARGS='--http-port 9000 --models simple': ric serve's flags (ric serve --help lists them).
serve: install
	$(BIN)/ric serve $(ARGS)

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/compare.py
