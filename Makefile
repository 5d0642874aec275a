# make run: Straddle end to end on this machine (fresh clone: creates .venv, installs, runs the demo).
# make test: the test suite. make setup: only the venv, pip and npm.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run keep test setup host clean-state

setup: $(STAMP)

# Reinstall only when the requirements or the npm lock change.
$(STAMP): requirements.txt requirements-dev.txt package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	npm ci --no-audit --no-fund --loglevel=error
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m sandbox.demo $(ARGS)

keep: $(STAMP)
	$(PY) -m sandbox.demo --keep $(ARGS)

host: $(STAMP)
	$(PY) -m sandbox.host $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

clean-state:
	rm -rf sandbox/host/.state sandbox/demo/.state
