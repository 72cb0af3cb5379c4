# Spoor: `make demo` runs the pipeline on the local stack, `make test` runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
N ?= 200000
export SPOOR_RUN_DIR ?= /var/tmp/spoor

.PHONY: install up down demo test unit bench logs clean

$(VENV)/.installed: pyproject.toml
	@echo "==> installing Spoor and its Python packages into $(VENV) (first run only)"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

install: $(VENV)/.installed

up: install          ## start Kafka, PostgreSQL, the collector and the worker in the background
	@deploy/stack.sh up

down:                ## stop everything `make up` started
	@deploy/stack.sh down

demo: up             ## simulated shoppers through the stack, then a summary from PostgreSQL
	@deploy/stack.sh demo

test: install        ## unit tests, then integration and end-to-end tests on the real Kafka and PostgreSQL
	@deploy/stack.sh infra
	@deploy/prometheus.sh install  # Prometheus + Alertmanager from Debian, for tests/integration/test_monitoring.py
	$(VENV)/bin/python -m pytest tests

unit: install
	$(VENV)/bin/python -m pytest tests/unit

bench: up            ## throughput and freshness figures (make bench N=1000000)
	$(VENV)/bin/python bench/pipeline.py --events $(N)

logs:
	@tail -n 50 $(SPOOR_RUN_DIR)/logs/*.log

clean: down
	rm -rf $(VENV) $(SPOOR_RUN_DIR)
