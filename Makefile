# One entry point for newcomers, CI and SREs. `make demo` and `make test` are the two
# commands a fresh machine needs; both install what they need into git-ignored folders.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON_PREFERENCE := only-system
UV ?= uv
RUN := $(UV) run --frozen
PYTEST_ARGS ?=

N ?= 20000

.PHONY: bench chaos help install stack-up stack-down stack-status lint test unit contracts contracts-check demo clean

help:
	@echo "make demo       install, start the stack and services, run a 1,000-loan portfolio, print a summary"
	@echo "                and the measures per variant, write a chart (.cache/demo/measures-per-variant.png)"
	@echo "make test       lint (ruff, mypy), contract check, unit + integration + end-to-end tests"
	@echo "make stack-up   start Kafka (KRaft) and PostgreSQL locally;  make stack-down stops them"
	@echo "make contracts  regenerate contracts/ (AsyncAPI, JSON Schemas, OpenAPI) from the code"
	@echo "make chaos      reliability run: N loans (default 20000) under kills and restarts"
	@echo "make bench      performance against the machine's own baseline (bench/results/)"

install:
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
	@$(UV) sync --frozen --quiet

stack-up: install
	@$(RUN) python scripts/stack.py up

stack-down:
	@if [ -x .venv/bin/python ]; then $(RUN) python scripts/stack.py down; fi

stack-status: install
	@$(RUN) python scripts/stack.py status

lint: install
	$(RUN) ruff format --check .
	$(RUN) ruff check .
	$(RUN) mypy libs services scripts bench tests conftest.py

contracts: install
	$(RUN) python -m scripts.contracts

contracts-check: install
	$(RUN) python -m scripts.contracts --check

# The tests marked unit (conftest.py marks every test by its folder and fixtures); a test
# among them that reaches for the stack or starts a process fails (tests/stack_guard.py).
unit: install
	$(RUN) pytest -m unit -q $(PYTEST_ARGS)

test: lint contracts-check deploy-check stack-up
	$(RUN) pytest -q $(PYTEST_ARGS)

# Validates deploy/ (Dockerfiles, compose, Kustomize overlays, CRDs, alerts) offline.
.PHONY: deploy-check
deploy-check: install
	$(RUN) python -m scripts.deploy_check

demo: install
	$(RUN) python -m scripts.demo

bench: stack-up
	$(RUN) python -m bench.run

chaos: stack-up
	$(RUN) python -m scripts.chaos --loans $(N)

clean: stack-down
	rm -rf .cache .venv
