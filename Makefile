# Spoor: `make demo` runs the pipeline on the local stack, `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
N ?= 200000
export SPOOR_RUN_DIR ?= /var/tmp/spoor

.PHONY: install up down demo test unit bench logs clean sdk-js

$(VENV)/.installed: pyproject.toml sdk/python/pyproject.toml
	@echo "==> installing Spoor and its Python packages into $(VENV) (first run only)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	$(VENV)/bin/pip install -q -e sdk/python
	@touch $@

install: $(VENV)/.installed

up: install          ## start Kafka, PostgreSQL and Spoor's processes (collector, worker, segments, campaigns, admin API)
	@deploy/stack.sh up

down:                ## stop everything `make up` started
	@deploy/stack.sh down

demo: up             ## simulated shoppers through the stack, then a summary from PostgreSQL
	@deploy/stack.sh demo

test: install sdk-js ## unit tests, then integration and end-to-end tests on the real Kafka and PostgreSQL
	@deploy/stack.sh infra
	@deploy/segment_node.sh
	@deploy/segment_compat.sh  # analytics-next (npm) and analytics-kotlin (Maven Central), for tests/e2e/test_segment_*.py
	@deploy/prometheus.sh install  # Prometheus + Alertmanager from Debian, for tests/integration/test_monitoring.py
	$(VENV)/bin/python -m pytest tests

unit: install
	$(VENV)/bin/python -m pytest tests/unit

.PHONY: faults
faults: install      ## the fault suite in full (tests/faults): its own Kafka and PostgreSQL, broken on purpose; `make test` runs its short form
	SPOOR_FAULTS=full $(VENV)/bin/python -m pytest tests/faults

# Browser SDK: npm packages, Chromium for its browser tests, type check + unit tests, gzipped bundle size.
sdk/js/node_modules/.installed: sdk/js/package-lock.json
	@echo "==> installing the browser SDK's npm packages into sdk/js/node_modules (first run only)"
	@# `npm install --no-save` installs the locked versions; `npm ci` refuses a lock without every
	@# platform's optional rollup binary, which the registry here does not all serve.
	cd sdk/js && npm install --no-save --no-audit --no-fund
	@touch $@

sdk-js: sdk/js/node_modules/.installed
	@deploy/chromium.sh
	cd sdk/js && npm test && npm run size

bench: up            ## throughput and freshness figures (make bench N=1000000)
	$(VENV)/bin/python bench/pipeline.py --events $(N)

OLD ?= 391f7a8
NEW ?= HEAD
ROUNDS ?= 2
.PHONY: bench-ab
bench-ab: install    ## two commits alternated on fresh stacks of their own, CPU per event and rows digest (make bench-ab OLD=391f7a8 NEW=HEAD N=1000000)
	bench/ab.sh $(OLD) $(NEW) $(N) $(ROUNDS)

.PHONY: bench-recommendations
bench-recommendations: install  ## Spoor's recommendations against three baselines on Online Retail's purchases
	@deploy/stack.sh infra
	$(VENV)/bin/python bench/recommendations.py

logs:
	@tail -n 50 $(SPOOR_RUN_DIR)/logs/*.log

clean: down
	rm -rf $(VENV) $(SPOOR_RUN_DIR)
