# smpp-bridge: the two commands of the README's Quick start, and their helpers.
# Everything installs into .venv from PyPI; nothing else is assumed but Python >= 3.11 and pip.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config/bridge.toml

.PHONY: run test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files so a second `make` does not reinstall.
# A current dev install (a superset) counts as a run install: `make run` after `make test`
# starts at once instead of reinstalling.
$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	if [ ! $(VENV)/.dev-installed -nt pyproject.toml ]; then \
		$(BIN)/python -m pip install --quiet -e '.[fast]'; fi
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[fast,dev]'
	touch $@

## Install and run the bridge on its embedded defaults (SMPP on 127.0.0.1:2775, account demo/demopass).
run: $(VENV)/.run-installed
	$(BIN)/smpp-bridge run --config $(CONFIG)

## Install and run the whole test suite: lint, type check, unit and integration tests.
test: lint typecheck unit

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check bridge tests benchmarks
	$(BIN)/lint-imports --no-cache

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy bridge

unit: $(VENV)/.dev-installed
	$(BIN)/pytest -q

bench: $(VENV)/.dev-installed
	$(BIN)/smpp-bridge bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
