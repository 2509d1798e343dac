# The README's two commands: `make demo` and `make test`. Both set up what is missing first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch goes in first and alone: the CPU wheel 2.13.0 satisfies `torch>=2.5` without pulling CUDA.
# --no-compile: Python compiles a module when it is first imported, so only the modules that run
# are compiled (pip would compile all of them, transformers' thousands of model files included,
# on one core: about half of the install's time).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-fast lint fmt venv system-deps clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-compile "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-compile -e '.[dev,bench]'  # bench: sparsify and SAELens, which tests compare against
	@touch $(STAMP)

venv: $(STAMP)

system-deps: venv
	@bash ops/system-deps.sh "$(PY)"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The suite runs on three pytest-xdist workers (each with its own Redis and homes) on the
# two-core machine it targets: the end-to-end scenarios spend part of their time waiting on a
# watchdog verdict or a redelivery, which a third worker fills.
# They wait on the events they expect, never on the machine's speed, so scenarios side by side
# only run longer. `make test TEST_WORKERS=1` runs everything in one process. pytest exits 5
# when it collects no tests: that is not a failure of the code under test.
# Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set: the suite starts some hundreds
# of Python processes (workers, beat, CLI calls), which would otherwise compile the same modules
# from source each time (pip installs with --no-compile).
TEST_WORKERS ?= 3
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/pytest
test: lint system-deps
	@$(PYTEST) -n $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

test-fast: venv
	$(PYTEST) -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

demo: system-deps
	$(VENV)/bin/saefleet demo

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
