# llm-service: every target creates .venv on a bare machine by itself.
PY        ?= python3
VENV      := .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
CONFIG    ?= config.yaml
CHROMIUM  ?= /usr/bin/chromium

.PHONY: help install run test test-ui chromium lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the package with its dev tools

run: $(STAMP)  ## serve on 127.0.0.1:8080 with config.yaml (prints a dev key if no master key is set)
	$(BIN)/llm-service serve --config $(CONFIG)

test: $(STAMP)  ## run the test suite, then the UI in a real browser (test-ui)
	$(BIN)/pytest -m "not ui" $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory test-ui

test-ui: $(STAMP) chromium  ## the dashboard end to end in Debian's chromium (Playwright, no browser download)
	$(BIN)/pytest -m ui $(PYTEST_ARGS)

chromium:  ## install Debian's chromium for the UI test when it is missing
	@test -x $(CHROMIUM) || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

lint: $(STAMP)  ## ruff + mypy
	$(BIN)/ruff check proxy tests bench
	$(BIN)/mypy

bench: $(STAMP)  ## proxy vs bare relay vs direct upstream; writes bench/results.json
	@command -v wrk >/dev/null || echo "note: wrk not found (Debian: apt-get install wrk): the tracing bench uses the Python load generator"
	$(BIN)/python -m bench.run

clean:  ## remove .venv, caches and local data
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data *.egg-info build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
