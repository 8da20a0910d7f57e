# Thin aliases: the install steps live in loops_webhooks/bootstrap.py (standard library only),
# which is what the README's quick start runs directly.
PYTHON ?= python3
BOOTSTRAP := $(PYTHON) -m loops_webhooks.bootstrap
BIN := .venv/bin

.PHONY: install dev serve worker test unit integration lint typecheck check bench clean

install:  ## the virtual environment with the project and its test tools
	$(BOOTSTRAP) install

dev:  ## receiver + worker on the embedded Redis, with the example handlers
	$(BOOTSTRAP) dev

serve: install  ## the receiver alone
	$(BIN)/loops-webhooks serve

worker: install  ## one worker alone
	$(BIN)/loops-webhooks worker

test:  ## every test: unit (fakeredis), integration (real Redis, real processes) and faults
	$(BOOTSTRAP) test

unit:  ## tests/unit alone
	$(BOOTSTRAP) test tests/unit

integration:  ## tests/integration and tests/faults
	$(BOOTSTRAP) test tests/integration tests/faults

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .

typecheck: install
	$(BIN)/python -m mypy

check: lint typecheck test

bench: install  ## receiver and worker against bare baselines, end to end (needs wrk), memory
	$(BIN)/python benchmarks/receiver.py
	$(BIN)/python benchmarks/worker.py
	$(BIN)/python benchmarks/end_to_end.py
	$(BIN)/python benchmarks/retention.py

clean:
	rm -rf .venv .loops-webhooks .pytest_cache .mypy_cache .ruff_cache
