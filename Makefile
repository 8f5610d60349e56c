# Everything a newcomer needs: `make run` and `make test` create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The example environment's agent runs beside the daemon and stops with it.
run: $(STAMP)
	$(BIN)/station-wf demo-agent & agent=$$!; trap 'kill $$agent 2>/dev/null' EXIT INT TERM; $(BIN)/station-wf serve

test: $(STAMP)
	$(BIN)/python -m pytest -q

# BENCH_ARGS: e.g. --quick (about ten minutes), --only throughput,dbos
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# Chaos: kill -9 the daemon and restart nats-server under a mixed workload, then check the invariants
# (exit 1 on any violation; the short variant runs in `make test` as tests/test_chaos.py).
# Across replicas: make chaos CHAOS_ARGS="--replicas 3 --runs 300 --seconds 120 --seed 1" runs 3 daemons
# on one Postgres database and a 3-node NATS cluster (--nats-nodes), killing random daemons and nodes.
CHAOS_ARGS ?= --runs 300 --seconds 120 --seed 1
chaos: $(STAMP)
	$(BIN)/python -m benchmarks.chaos $(CHAOS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check station_wf tests benchmarks

clean:
	rm -rf $(VENV) data .pytest_cache
