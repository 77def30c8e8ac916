# Two commands do all the set-up: `make demo` (a real sweep) and `make test`.
PYTHON ?= python3
VENV ?= .venv
# Data: a local copy when there is one (as on the project's machines), else torchvision downloads.
DATA_DIR ?= $(or $(SWEEPER_DATA_DIR),$(wildcard ../shared/datasets),data)
export SWEEPER_DATA_DIR := $(DATA_DIR)

INSTALLED := $(VENV)/.installed

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

.PHONY: install demo test test-fast lint bench
install: $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/sweeper launch studies/quickstart.py --workers 2

# The whole suite: the fast tier and the end-to-end sweeps on 3 pytest workers (they wait on
# servers and worker processes as much as they compute), then the fault suite beside the Ray
# cluster, one file a worker: their timings (grace periods, killed workers) need the CPU.
test: $(INSTALLED)
	$(VENV)/bin/pytest -q -n 3 --dist loadfile -m "not fault and not cluster" --durations 15
	$(VENV)/bin/pytest -q -n 2 --dist loadfile -m "fault or cluster" --durations 10

# The fast tier: every unit of the orchestration, no real sweep (well under 2 minutes).
test-fast: $(INSTALLED)
	$(VENV)/bin/pytest -q -m "not e2e and not fault and not cluster"

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# CUDA tests (tests_gpu/, not collected by `make test`): they stop at once, non-zero, without a
# GPU. On a bare GPU machine bench/gpu.sh runs them with its own Python: PYTEST="python3 -m pytest".
PYTEST ?= $(VENV)/bin/pytest
.PHONY: test-gpu
test-gpu:
	$(PYTEST) -q tests_gpu
