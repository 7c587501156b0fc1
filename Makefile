# Quick start: `make demo` (the default toy study) and `make test` (the test suite); each sets up .venv.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: install test test-fast demo lint
install: $(VENV)/.installed

# Serial: the Ray tests start and stop whole clusters (the 2-node test's teardown runs `ray stop
# --force`), which killed a study of a test running beside it under pytest-xdist.
test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not gpu" --durations=15

# Everything but the Ray studies (no cluster starts): the inner loop, about 3 minutes on 2 cores.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not gpu" -n 2 --dist loadfile

demo: $(VENV)/.installed
	$(VENV)/bin/study run

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
