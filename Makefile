# Straddle on this machine: `make help` lists the targets (the text after each `##`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help run keep test setup host clean-state
.DEFAULT_GOAL := help

help: ## this list
	@echo "make TARGET [ARGS='...']  (a fresh clone needs nothing else: run, keep and test create .venv first)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  \1\t\2/' | expand -t 16
	@echo "The CLI without activating the venv: $(PY) -m shared --help"

setup: $(STAMP) ## create .venv and install (pip, npm) when the requirements change

# Reinstall only when the requirements or the npm lock change.
$(STAMP): requirements.txt requirements-dev.txt package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

run: $(STAMP) ## the demo end to end: start the local stack, play a marketer's scenario, reconcile, stop (exit 0 = all propagated)
	$(PY) -m sandbox.demo $(ARGS)

keep: $(STAMP) ## the same, then keep the stack up until Ctrl-C; writes sandbox/demo/.state/env.sh for the CLI
	$(PY) -m sandbox.demo --keep $(ARGS)

host: $(STAMP) ## the local Functions host alone on :7071 (sandbox/host/README.md)
	$(PY) -m sandbox.host $(ARGS)

test: $(STAMP) ## the test suite (starts Azurite and the Dataverse sandbox itself)
	$(PY) -m pytest -q

clean-state: ## forget the local host's keys and queues and the demo's log
	rm -rf sandbox/host/.state sandbox/demo/.state
