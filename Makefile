# The two commands a user needs: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-slow demo clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Default test run (slow tests excluded; see pytest.ini).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests $(PYTEST_ARGS)

# Everything, slow tests included.
test-slow: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "" tests $(PYTEST_ARGS)

# Pre-trains the tiny model on the embedded corpus and knowledge graph (all five
# objectives), evaluates it and generates a continuation. Re-running resumes;
# `make demo DEMO_DIR=/tmp/elsewhere` (or deleting runs/demo) starts fresh.
DEMO_DIR ?= runs/demo
DEMO = $(PY) -m ernie3_jax.main --gin_file=gin_configs/experiments/demo.gin \
	--gin.MODEL_DIR="'$(DEMO_DIR)'"
demo: $(STAMP)
	$(DEMO) --run_mode=train
	$(DEMO) --run_mode=eval
	$(DEMO) --run_mode=infer

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
