# Rampart developer commands. Every target sets up what it needs on a fresh machine:
# a virtual environment in .venv with the pinned dependencies, and the Rust extension built into it.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.deps-stamp
RUST_SOURCES := $(shell find rust -name '*.rs' -o -name Cargo.toml) Cargo.toml
EXT_STAMP := $(VENV)/.ext-stamp

.PHONY: help venv dev demo test test-rust test-python lint fmt bench bench-rust wheel-check clean

help:
	@echo "make demo        build everything and run the demo"
	@echo "make test        build everything and run all tests (cargo test + pytest)"
	@echo "make lint        cargo fmt --check, clippy -D warnings, ruff, mypy (incl. the _core stub)"
	@echo "make bench       Python benchmarks (pytest-benchmark) and cargo bench"
	@echo "make dev         (re)build the Rust extension into .venv"
	@echo "make wheel-check build the wheel, install it in a fresh venv, run the demo from an empty dir"

$(STAMP): requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(STAMP)

# maturin develop installs the package into .venv (editable for Python, compiled extension in place).
$(EXT_STAMP): $(STAMP) $(RUST_SOURCES)
	$(BIN)/maturin develop --release --quiet
	touch $@

dev: $(EXT_STAMP)

demo: $(EXT_STAMP)
	$(BIN)/rampart demo

test-rust:
	cargo test --workspace --quiet

test-python: $(EXT_STAMP)
	$(BIN)/python -m pytest

test: test-rust test-python

lint: $(EXT_STAMP)
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	$(BIN)/ruff check python tests benches
	$(BIN)/ruff format --check python tests benches
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest rampart._core --allowlist stubtest-allowlist.txt

fmt: $(STAMP)
	cargo fmt --all
	$(BIN)/ruff format python tests benches
	$(BIN)/ruff check --fix python tests benches

bench: $(EXT_STAMP)
	$(BIN)/python -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,ops,rounds -p no:cacheprovider
	cargo bench -p rampart-core --bench engine

bench-rust:
	cargo bench -p rampart-core --bench engine

# What a user gets from `pip install rampart`: the built wheel alone, in a fresh virtual environment,
# runs the demo from an empty directory (nothing read from the source tree).
WHEEL_DIR := .wheel-check
wheel-check: $(STAMP)
	rm -rf $(WHEEL_DIR)
	$(BIN)/maturin build --release --quiet --out $(WHEEL_DIR)/dist
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/python -m pip install --quiet --disable-pip-version-check $(WHEEL_DIR)/dist/*.whl
	mkdir -p $(WHEEL_DIR)/empty
	cd $(WHEEL_DIR)/empty && ../venv/bin/rampart demo --plain > ../demo.log
	test -s $(WHEEL_DIR)/empty/rampart-demo-report.html
	@echo "wheel-check OK: $$(ls $(WHEEL_DIR)/dist)"

clean:
	rm -rf $(VENV) target $(WHEEL_DIR)
