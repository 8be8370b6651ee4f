# The two commands of the README, and `make bench` (the benchmark comparison). Torch is pinned to the CPU
# build that this project's machines keep on disk; elsewhere set TORCH, e.g. make test TORCH='torch>=2.1'.
PYTHON ?= python3
TORCH ?= torch==2.13.0

.PHONY: install test serve bench

install:
	$(PYTHON) -m pip install -q -e '.[test,torch]' '$(TORCH)'
	bash benchmarks/install_perf_analyzer.sh

test: install
	$(PYTHON) -m pytest

serve: install
	ric serve

bench: install
	$(PYTHON) -m pip install -q -e '.[bench]'
	$(PYTHON) benchmarks/compare.py
