# kube-mcp-gateway — developer entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install test lint fmt testbed demo bench soak opa-test clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP) ## Create .venv and install the package with its dev extra

testbed: $(STAMP) ## Build or fetch the real components (cached outside the clone)
	$(PY) -m tests.testbed.build

test: testbed ## Install, provision the testbed, run the whole suite
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

lint: $(STAMP) ## ruff + mypy (+ opa fmt/check on policies)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP) ## Format the Python code
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

opa-test: testbed ## Run the Rego unit tests with coverage
	$(PY) -m tests.testbed.opa_test policies

demo: testbed ## Run the whole flow locally (testbed, services, gateway, scripted session)
	$(PY) -m tests.testbed.demo

bench: testbed ## Run the benchmarks; results in bench/results/
	$(PY) -m bench

soak: testbed ## Long mixed-traffic soak through the local gateway
	$(PY) -m bench --soak

clean: ## Remove the venv, caches and testbed run state (not the component cache)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .testbed *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
