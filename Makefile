# Developer entry point. `make help` lists the targets.
PY ?= python3

.PHONY: help dev test test-rust test-python lint fmt bench demo

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

dev:  ## install the package in editable mode with test and lint tools
	$(PY) -m pip install -q -e '.[dev]'

test: dev test-rust test-python  ## build, then run every test (Rust and Python)

test-rust:  ## cargo tests of the routing core, the HTTP proxy and the simulator's block table
	cargo test -p llmlb-core -p llmlb-proxy -p llmlb-sim

test-python:  ## pytest suite (benchmarks excluded)
	$(PY) -m pytest

lint:  ## formatters, linters, type checks, stub check
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m mypy.stubtest llmlb_fast._core
	$(PY) -m grpc_server.codegen --check

fmt:  ## apply formatters
	cargo fmt --all
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

bench:  ## pytest-benchmark suites and the core report (writes benches/results/)
	$(PY) -m pytest benches --benchmark-enable -o addopts="" -p no:cacheprovider
	$(PY) benches/core_report.py

demo:  ## the README's first command, from a dev install
	llmlb demo
