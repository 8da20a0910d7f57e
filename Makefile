# The README's quick start is `make dev` and `make test`; both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install dev serve worker test unit integration lint typecheck check bench clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)  ## the virtual environment with the project and its test tools

dev: $(INSTALLED)  ## receiver + worker on the embedded Redis, with the example handlers
	$(BIN)/loops-webhooks dev

serve: $(INSTALLED)  ## the receiver alone
	$(BIN)/loops-webhooks serve

worker: $(INSTALLED)  ## one worker alone
	$(BIN)/loops-webhooks worker

test: $(INSTALLED)  ## every test: unit (fakeredis) and integration (real Redis, real processes)
	$(BIN)/python -m pytest -q

unit: $(INSTALLED)
	$(BIN)/python -m pytest -q tests/unit

integration: $(INSTALLED)
	$(BIN)/python -m pytest -q tests/integration

lint: $(INSTALLED)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

typecheck: $(INSTALLED)
	$(BIN)/python -m mypy

check: lint typecheck test

bench: $(INSTALLED)  ## receiver and worker against bare baselines, then end to end (needs wrk)
	$(BIN)/python benchmarks/receiver.py
	$(BIN)/python benchmarks/worker.py
	$(BIN)/python benchmarks/end_to_end.py

clean:
	rm -rf $(VENV) .loops-webhooks .pytest_cache .mypy_cache .ruff_cache
