# The two commands a user needs: `make demo` and `make test` (both install first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test test-slow demo clean study

install: $(STAMP)

# setuptools reminds every editable install that folders named like the package (tasks/,
# gin_configs/, mapped into it by setup.py) take precedence: known, and said in setup.py.
EDITABLE_QUIET = PYTHONWARNINGS="ignore:Editable installation"
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(EDITABLE_QUIET) $(PY) -m pip install --quiet -e '.[dev]'
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
# glibc settings that keep XLA:CPU's per-step buffers mapped (ernie3_jax/runtime/host_memory.py).
HOST_MEMORY = GLIBC_TUNABLES="$$($(PY) -m ernie3_jax.runtime.host_memory)"
DEMO = $(HOST_MEMORY) $(PY) -m ernie3_jax.cli.main --gin_file=gin_configs/experiments/demo.gin \
	--gin.MODEL_DIR="'$(DEMO_DIR)'"
demo: $(STAMP)
	$(DEMO) --run_mode=train
	$(DEMO) --run_mode=eval
	$(DEMO) --run_mode=infer

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Benchmarks (CPU, fp32): JAX vs PyTorch training and decoding, data pipeline vs the
# demo's consumption, and the 10B memory plan; one JSON line each in BENCH_DIR.
# Installs the [bench] extra (CPU PyTorch, transformers); BENCH_PIP_ARGS may name a
# CPU-only wheel index so that pip does not fetch a CUDA build of torch.
BENCH_DIR ?= benchmarks/results
BENCH_PIP_ARGS ?=
.PHONY: bench
bench: $(STAMP)
	$(EDITABLE_QUIET) $(PY) -m pip install --quiet $(BENCH_PIP_ARGS) -e '.[bench]'
	mkdir -p $(BENCH_DIR)
	$(HOST_MEMORY) $(PY) benchmarks/train_throughput.py --output=$(BENCH_DIR)/train_throughput.jsonl
	$(HOST_MEMORY) $(PY) benchmarks/decode_throughput.py --output=$(BENCH_DIR)/decode_throughput.jsonl
	$(HOST_MEMORY) $(PY) benchmarks/decode_trace.py --output=$(BENCH_DIR)/decode_trace.jsonl
	$(HOST_MEMORY) $(PY) benchmarks/data_throughput.py --output=$(BENCH_DIR)/data_throughput.jsonl
	$(PY) benchmarks/memory_plan_10b.py --output=$(BENCH_DIR)/memory_plan_10b.jsonl
	$(PY) benchmarks/restore_verification.py --output=$(BENCH_DIR)/restore_verification.jsonl
	$(PY) benchmarks/decode_memory_plan_10b.py --output=$(BENCH_DIR)/decode_memory_plan_10b.jsonl
	$(HOST_MEMORY) $(PY) benchmarks/sharded_decode.py --output=$(BENCH_DIR)/sharded_decode.jsonl
	$(PY) benchmarks/start_to_first_step.py --output=$(BENCH_DIR)/start_to_first_step.jsonl

# The knowledge study (docs/KNOWLEDGE_STUDY.md): 5 arms x 3 seeds of 12,000 steps, about
# 2 h per seed on 2 CPU cores (STUDY_ARGS=--seeds=0 for one seed). Resumable:
# finished arm x seed lines in STUDY_RESULTS are skipped on a rerun.
STUDY_DIR ?= runs/knowledge_study
STUDY_RESULTS ?= benchmarks/results/knowledge_study.jsonl
STUDY_FIGURE ?= benchmarks/results/knowledge_study.png
STUDY_ARGS ?=
study: $(STAMP)
	$(EDITABLE_QUIET) $(PY) -m pip install --quiet -e '.[study]'
	$(HOST_MEMORY) $(PY) benchmarks/knowledge_study.py --out_dir=$(STUDY_DIR) \
		--results=$(STUDY_RESULTS) --figure=$(STUDY_FIGURE) $(STUDY_ARGS)
