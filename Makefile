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

TORCH  := torch==2.13.0
LOCK   := requirements.lock

.PHONY: install lock run test test-fast lint format bench repro clean up down status serve

# torch first, pinned: the CPU build, so that no dependency resolves a CUDA build. Then the
# project with every other package at the version CI tested (requirements.lock, constraints).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

# Refresh the lock from the installed venv after changing pyproject.toml's dependencies:
# `pip install -e '.[dev]'` (or -U some-package), then `make lock` and commit requirements.lock.
# torch is left out: the line above pins it (a CPU or CUDA build of the same version).
lock:
	test -x $(BIN)/python
	{ echo "# Constraints for make install: the resolved set CI tested (make lock rewrites it)."; \
	  echo "# torch is pinned by the Makefile ($(TORCH)); the project itself is not listed."; \
	  $(BIN)/python -m pip freeze --all --exclude-editable --disable-pip-version-check \
	    | grep -v -i -E '^(torch|dlops|pip)==' ; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)

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

# The champion over HTTP on 127.0.0.1:8000 (after `make run`): ARGS="--port 8001 --workers 2".
serve: install
	$(BIN)/dlops serve $(ARGS)

# every speed figure side by side (fresh clones of HEAD; ARGS=--quick for < 3 min); JSON in reports/
bench: install
	$(BIN)/python benchmarks/bench.py $(ARGS)

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
