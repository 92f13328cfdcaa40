# Energy telemetry platform. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCAL_PG_PORT ?= 55432
export LOCAL_PG_PORT
DEV_DATABASE_URL := postgresql://postgres@127.0.0.1:$(LOCAL_PG_PORT)/telemetry
RUN_DATABASE_URL := $(or $(DATABASE_URL),$(DEV_DATABASE_URL))
API_HOST ?= 127.0.0.1
API_PORT ?= 8000

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

.PHONY: venv
venv: $(VENV)/.installed ## Create the Python environment

.PHONY: timescaledb
timescaledb: ## Install TimescaleDB for the local PostgreSQL when it is missing
	@bash scripts/install-timescaledb.sh

.PHONY: db
db: timescaledb ## Create and start the local development cluster (unless DATABASE_URL is set)
	@bash scripts/local-db.sh

.PHONY: migrate
migrate: venv db ## Apply the SQL migrations
	@DATABASE_URL=$(RUN_DATABASE_URL) $(PY) -m api migrate

.PHONY: run
run: migrate ## Set up everything and serve the API on 127.0.0.1:8000
	@mkdir -p .local
	@DATABASE_URL=$(RUN_DATABASE_URL) $(PY) -m api keys create --scope ingest,read,admin --name "make run" \
		| tail -n 1 > .local/dev-api-key
	@echo ""
	@echo "  API:         http://$(API_HOST):$(API_PORT)"
	@echo "  API docs:    http://$(API_HOST):$(API_PORT)/schema"
	@echo "  Readiness:   http://$(API_HOST):$(API_PORT)/health/ready"
	@echo "  Metrics:     http://$(API_HOST):$(API_PORT)/metrics"
	@echo "  Dev API key: $$(cat .local/dev-api-key)   (scopes ingest,read,admin; also in .local/dev-api-key)"
	@echo ""
	@DATABASE_URL=$(RUN_DATABASE_URL) API_HOST=$(API_HOST) API_PORT=$(API_PORT) exec $(PY) -m api serve

.PHONY: test
test: venv timescaledb ## Run the whole test suite against every TimescaleDB edition this machine can run
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: bench
bench: venv db ## Run the benchmarks (prints a table, writes bench-results/*.json)
	$(PY) -m bench $(BENCH_ARGS)

.PHONY: stop-db
stop-db: ## Stop the local development cluster
	@scripts/pg-ctl stop -D .local/pgdata -m fast || true

.PHONY: clean
clean: stop-db ## Remove the Python environment and the local cluster
	rm -rf $(VENV) .local
