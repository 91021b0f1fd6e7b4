# geofm — set-up, tests and demo. Only Python 3.11 is needed on the machine.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,notebooks,sagemaker,generative
BIN := $(VENV)/bin
STAMP := $(VENV)/.geofm-installed
PYTEST_ARGS ?=
DEMO_OUT ?= demo-run

.PHONY: setup browser test test-fast demo lint clean

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

# The browser tests of `geofm serve` (tests/serve) drive the system Chromium through
# Playwright; browsers are never downloaded. Installed with apt when missing; where
# there is no apt the browser tests skip and say why.
CHROMIUM ?= chromium
browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(CHROMIUM) (Debian package) for the browser tests"; \
	    SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(CHROMIUM); \
	  else \
	    echo "warning: no $(CHROMIUM) and no apt-get: the browser tests (tests/serve) will be skipped"; \
	  fi; }

test: setup browser
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
