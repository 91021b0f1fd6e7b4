# geofm — set-up, tests and demo. Only Python 3.11 is needed on the machine.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,notebooks,sagemaker,generative
BIN := $(VENV)/bin
STAMP := $(VENV)/.geofm-installed
PYTEST_ARGS ?=
DEMO_OUT ?= demo-run

.PHONY: setup test test-fast demo lint clean

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Torch first (pinned CPU build) so no dependency pulls the CUDA wheels. TORCH_SPEC is
# passed to pip unquoted, so it may carry options (e.g. "torch==2.5.1 --index-url URL").
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/geofm demo --out $(DEMO_OUT)

lint: setup
	$(BIN)/ruff check geofm tests pipelines benchmarks
	$(BIN)/mypy geofm

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
