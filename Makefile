# Quick start: `make demo` (the default toy study) and `make test` (the test suite); each sets up .venv.
VENV ?= .venv
PY := $(VENV)/bin/python

# uv (from PyPI) resolves and installs the same packages as pip, in parallel; --compile-bytecode
# writes the .pyc files as pip does: without them every process Ray starts with `python -B` (the
# dashboard's) compiles its imports again, and the test suite took 37 minutes instead of 20.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) -e '.[dev,server]'
	touch $@

.PHONY: install test test-fast test-gpu demo lint
install: $(VENV)/.installed

# Two pytest-xdist workers, one test file each at a time: every Ray test starts and stops only its
# own cluster (the 2-node test kills its own process trees, never `ray stop --force`). Files go out
# longest first (tests/conftest.py); xdist's own reorder (most tests first) sent the long studies,
# files of one or two tests, last (33.8 min instead of 35.2 on a clean clone, 2026-12-04).
test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not gpu" -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# Everything but the tests marked slow (the Ray studies, torch.compile equivalence, trainings and
# process groups over 10 s): the inner loop. No cluster starts and no module fixture is costly, so
# tests, not files, go to the two workers (worksteal: 8 % faster than loadfile, measured).
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not gpu" -n 2 --dist worksteal

# The CUDA paths (tests marked gpu; skipped without CUDA, deselected by `make test`).
test-gpu: $(VENV)/.installed
	$(PY) -m pytest -q -m gpu -rs

demo: $(VENV)/.installed
	$(VENV)/bin/study run

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
