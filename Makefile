# App Supervisor. Two set-up commands for a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
PYTHON ?= python3

.PHONY: run test test-sqlite test-postgres lint format clean cluster browser bench bench-quick reliability soak

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $@

## make run: local mode (one process, SQLite under storage/), with a running `demo` app.
run: $(VENV)/.installed
	$(PY) manage.py check --fail-level ERROR
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py bootstrap_local
	@echo "Supervisor UI: http://$(HOST):$(PORT)/admin/   Demo app: http://$(HOST):$(PORT)/apps/demo/admin/"
	$(VENV)/bin/uvicorn supervisor_project.asgi:application --host $(HOST) --port $(PORT) \
		--lifespan on --no-server-header

## make cluster: supervisor + env_a + env_b on this machine (PostgreSQL + Redis, no Docker).
cluster: $(VENV)/.installed
	$(PY) bin/cluster.py

## make bench: every benchmark (not tests), one table on stdout; JSON, Markdown and a PNG
## plot under bench/results/. BENCH_ARGS passes options (--quick, --only commands,proxy ...).
bench: $(VENV)/.installed
	@command -v wrk >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light; }
	$(PY) -m bench $(BENCH_ARGS)

## make bench-quick: the same, fewer and shorter (a smoke run).
bench-quick:
	$(MAKE) --no-print-directory bench BENCH_ARGS="--quick $(BENCH_ARGS)"

## make test: the whole suite, on SQLite and on PostgreSQL.
test: $(VENV)/.installed browser
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgres

# The browser tests drive Debian's chromium (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
		|| { echo "could not install chromium: run 'apt-get install chromium' as root"; exit 1; }; }

test-sqlite: $(VENV)/.installed
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "== tests on SQLite =="; \
	env -u DB_HOST -u DB_PORT -u DB_DATABASE DB_DIALECT=sqlite STORAGE_DIR="$$tmp" \
		$(VENV)/bin/pytest -m "not soak and not once" --durations=15 $(PYTEST_ARGS)

test-postgres: $(VENV)/.installed
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "== tests on PostgreSQL =="; \
	DB_DIALECT=postgres DB_HOST=$${DB_HOST:-127.0.0.1} DB_PORT=$${DB_PORT:-5432} \
		DB_USER=$${DB_USER:-postgres} DB_DATABASE=$${DB_DATABASE:-supervisor} STORAGE_DIR="$$tmp" \
		$(VENV)/bin/pytest --durations=15 $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) storage/*.sqlite3* storage/apps storage/static

## make reliability: the fault tests (real processes), then docs/RELIABILITY.md from their run.
reliability: $(VENV)/.installed
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	rm -f tests/artifacts/reliability.json; \
	DB_DIALECT=postgres DB_HOST=$${DB_HOST:-127.0.0.1} DB_PORT=$${DB_PORT:-5432} \
		DB_USER=$${DB_USER:-postgres} DB_DATABASE=$${DB_DATABASE:-supervisor} STORAGE_DIR="$$tmp" \
		$(VENV)/bin/pytest tests/integration/test_faults.py $(PYTEST_ARGS)
	$(PY) bin/reliability_table.py

## make soak: the load tests (200 clients for 60 s through the proxy; 1,000 commands).
soak: $(VENV)/.installed
	@command -v wrk >/dev/null 2>&1 || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	echo "== soak (PostgreSQL) =="; \
	DB_DIALECT=postgres DB_HOST=$${DB_HOST:-127.0.0.1} DB_PORT=$${DB_PORT:-5432} \
		DB_USER=$${DB_USER:-postgres} DB_DATABASE=$${DB_DATABASE:-supervisor} STORAGE_DIR="$$tmp" \
		$(VENV)/bin/pytest -m soak tests/integration/test_load.py $(PYTEST_ARGS)
