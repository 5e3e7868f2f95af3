# dlops: `make run` runs the whole pipeline, `make test` runs the tests. Both create .venv first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PURGE  ?= 0

# Nothing leaves the machine (the CLI sets the same defaults; this covers pytest and dvc).
export DO_NOT_TRACK ?= true
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true
export GX_ANALYTICS_ENABLED ?= false
export DVC_NO_ANALYTICS ?= true

.PHONY: install run test test-fast lint format bench repro clean up down status

# torch first, pinned: the CPU build, so that no dependency resolves a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/dlops run $(ARGS)

test: install
	$(BIN)/pytest $(ARGS)

test-fast: install
	$(BIN)/pytest -m "not integration and not slow" $(ARGS)

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install
	$(BIN)/python benchmarks/pipeline_time.py $(ARGS)

repro: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

clean:
	rm -rf data reports mlflow.db mlartifacts mlruns .dvc/cache .dvc/tmp lightning_logs

# The team stack (infra/stack/*.sh): MLflow + Prefect on PostgreSQL, a process work pool and two
# workers, all on 127.0.0.1; `make up` writes .env, `make down` stops it (PURGE=1 drops the DBs).
up: install
	@DLOPS_VENV="$${DLOPS_VENV:-$(abspath $(VENV))}" bash infra/stack/up.sh

down:
	@PURGE=$(PURGE) bash infra/stack/down.sh

status:
	@bash infra/stack/status.sh
