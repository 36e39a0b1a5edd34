# The two commands a newcomer needs: `make run` and `make test`. Both set everything up themselves.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVE_CONFIG ?= serve_config.yaml
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: run test venv install install-test flite lint typecheck bench load clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python

flite:
	@command -v flite >/dev/null 2>&1 || { \
	  echo "installing flite (apt)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq flite >/dev/null; }

install: venv flite
	$(BIN)/pip install -q -e .

install-test: venv flite
	$(BIN)/pip install -q -e '.[test]'
	@# CPU build of torch for the Zonos test double; never the multi-GB CUDA default.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0 || \
	  $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu

# Same deployment as `serve run $(SERVE_CONFIG)` (the plain way), plus a graceful drain on
# SIGTERM/SIGINT: requests in flight finish (up to the Ingress graceful_shutdown_timeout_s).
run: install
	mkdir -p data
	$(BIN)/python -m serve_app.launch --config $(SERVE_CONFIG) --port 8000 --host 0.0.0.0

test: install-test
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check . || true

typecheck: install-test
	$(BIN)/mypy config serve_app agent

bench: install-test
	$(BIN)/python -m bench.ttfb
	$(BIN)/python -m bench.failover

load: install-test
	$(BIN)/python -m bench.load --sessions 100 --duration 60 --report reports/load

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
