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

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m benchmarks

lint: $(STAMP)
	$(BIN)/ruff check station_wf tests benchmarks

clean:
	rm -rf $(VENV) data .pytest_cache
