# Energy telemetry platform. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LOCAL_PG_PORT ?= 55432
export LOCAL_PG_PORT
# The local cluster: migrations run as its owner (postgres), the API as telemetry_api, a role that
# reads and writes data and runs no DDL (created by `python -m api migrate`).
DEV_OWNER_URL := postgresql://postgres@127.0.0.1:$(LOCAL_PG_PORT)/telemetry
DEV_DATABASE_URL := postgresql://telemetry_api@127.0.0.1:$(LOCAL_PG_PORT)/telemetry
RUN_DATABASE_URL := $(or $(DATABASE_URL),$(DEV_DATABASE_URL))
RUN_MIGRATE_URL := $(or $(MIGRATE_DATABASE_URL),$(if $(DATABASE_URL),$(DATABASE_URL),$(DEV_OWNER_URL)))
DEV_KEY_FILE ?= .local/dev-api-key
# The log: a project-local NATS server (JetStream, MQTT) unless NATS_URL is set.
NATS_DIR ?= .local/nats
NATS_PORT ?= 54222
MQTT_PORT ?= 51883
WRITER_PORT ?= 8001
export NATS_DIR NATS_PORT MQTT_PORT
RUN_NATS_URL = $(or $(NATS_URL),$(shell cat $(NATS_DIR)/url 2>/dev/null))
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

.PHONY: nats-install
nats-install:
	@bash scripts/install-nats.sh

.PHONY: nats
nats: nats-install ## Start the local NATS server (JetStream and MQTT) under .local/nats (unless NATS_URL is set)
	@bash scripts/local-nats.sh | grep -v '^NATS_URL='

.PHONY: migrate
migrate: venv db nats ## Apply the SQL migrations (as the owner), set up the API's role and the log's streams
	@DATABASE_URL='$(RUN_DATABASE_URL)' MIGRATE_DATABASE_URL='$(RUN_MIGRATE_URL)' NATS_URL='$(RUN_NATS_URL)' \
		$(PY) -m api migrate

.PHONY: dev-key
dev-key: venv ## Reuse the development API key in .local/dev-api-key while it is valid, else create one (mode 0600)
	@DATABASE_URL='$(RUN_DATABASE_URL)' $(PY) -m api keys ensure --file $(DEV_KEY_FILE) \
		--scope ingest,read,admin --name "make run" >/dev/null

.PHONY: browser
browser: ## Install Debian's Chromium for the dashboard's browser tests when it is missing
	@bash scripts/install-chromium.sh

.PHONY: dashboard
dashboard: ## Install the dashboard's chart library (npm ci in dashboard/) when missing or outdated
	@bash scripts/dashboard-assets.sh

.PHONY: run
run: migrate dashboard ## Set up everything and serve the API on 127.0.0.1:8000
	@$(MAKE) --no-print-directory dev-key
	@echo ""
	@echo "  Dashboard:   http://$(API_HOST):$(API_PORT)/"
	@echo "  API:         http://$(API_HOST):$(API_PORT)"
	@echo "  API docs:    http://$(API_HOST):$(API_PORT)/schema"
	@echo "  Readiness:   http://$(API_HOST):$(API_PORT)/health/ready"
	@echo "  Metrics:     http://$(API_HOST):$(API_PORT)/metrics"
	@echo "  Dev API key: $$(cat $(DEV_KEY_FILE))   (scopes ingest,read,admin; kept in $(DEV_KEY_FILE), mode 0600)"
	@echo "  NATS:        $(if $(NATS_URL),$(NATS_URL),nats://127.0.0.1:$(NATS_PORT)   (service user's URL in $(NATS_DIR)/url, mode 0600))"
	@$(if $(NATS_URL),,echo "  MQTT:        mqtt://127.0.0.1:$(MQTT_PORT)   (user: the key's id, $$(cut -d_ -f2 $(DEV_KEY_FILE)); password: the key)")
	@echo "  Writer:      http://127.0.0.1:$(WRITER_PORT)/metrics"
	@echo ""
	@export DATABASE_URL='$(RUN_DATABASE_URL)' NATS_URL='$(RUN_NATS_URL)' WRITER_PORT=$(WRITER_PORT); \
	$(if $(NATS_URL),,$(PY) -m api broker-users --watch --file $(NATS_DIR)/auth.conf --pid-file $(NATS_DIR)/nats.pid &) \
	$(PY) -m api writer & \
	API_HOST=$(API_HOST) API_PORT=$(API_PORT) exec $(PY) -m api serve

.PHONY: test
test: venv timescaledb browser dashboard ## Run the whole test suite against every TimescaleDB edition this machine can run
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: bench
bench: venv db nats-install ## Run the benchmarks (prints a table, writes bench-results/*.json)
	@bash scripts/install-bench-tools.sh
	@DATABASE_URL='$(RUN_DATABASE_URL)' MIGRATE_DATABASE_URL='$(RUN_MIGRATE_URL)' $(PY) -m bench $(BENCH_ARGS)

.PHONY: stop-db
stop-db: ## Stop the local development cluster
	@scripts/pg-ctl stop -D .local/pgdata -m fast || true

.PHONY: stop-nats
stop-nats: ## Stop the local NATS server
	@bash scripts/local-nats.sh stop

.PHONY: clean
clean: stop-db stop-nats ## Remove the Python environment, the local cluster and the local NATS server
	rm -rf $(VENV) .local
