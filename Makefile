# The two commands a newcomer needs: `make run` and `make test`. Both set everything up themselves.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVE_CONFIG ?= serve_config.yaml
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: run test venv install install-test install-zonos spoken-cache flite flite-lib browser lint typecheck bench load clean

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
	@$(MAKE) --no-print-directory flite-lib

# libflite's core rebuilt from Debian's own source for this CPU (x86-64-v3: fused multiply-add),
# ~12% less CPU a sentence, same audio; checked against the system library before use. Quick when
# built; when it cannot be built (no compiler, no network, an older CPU) the system's is used.
FLITE_LIB_DIR ?= data/flite
flite-lib:
	@$(BIN)/python -m serve_app.engines.flite_lib --build --dir $(FLITE_LIB_DIR) || true

# NeMo's English text-normalisation grammars, compiled once (30-60 s) into data/tn-cache; replicas
# only load them (under a second). Quick when the cache is there.
TN_CACHE ?= data/tn-cache
spoken-cache: install
	$(BIN)/python -m serve_app.core.spoken --build-cache --cache-dir $(TN_CACHE)

# Headless Chromium and its driver for the playground's browser tests (Debian packages; no downloads).
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver (apt)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

install-test: venv flite browser install-zonos
	$(BIN)/pip install -q -e '.[test]'
	@$(MAKE) --no-print-directory flite-lib
	@# CPU build of torch for the Zonos test double; never the multi-GB CUDA default.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0 || \
	  $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu

# The real upstream Zonos library (the wheel in ../shared/wheels) and what it imports, so the tests
# run the real model code on CPU with small random weights. Quick when it already imports. Two
# stand-ins (tools/zonos-cpu), each installed only where the real package is absent: sudachidict_full
# served from sudachidict-core (the real one downloads its dictionary while building), and PyPI's
# torchaudio without its native library (built for CUDA torch 2.11, it cannot load with CPU torch
# 2.13; what Zonos uses from torchaudio is pure torch). GPU images install Zonos from source instead.
ZONOS_WHEEL ?= ../shared/wheels/zonos-0.1.0-py3-none-any.whl
install-zonos: venv
	@command -v espeak-ng >/dev/null 2>&1 || { \
	  echo "installing espeak-ng (apt)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng >/dev/null; }
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0 || \
	  $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	@if $(BIN)/python -c "import zonos.model, zonos.conditioning" >/dev/null 2>&1; then :; \
	elif [ ! -f "$(ZONOS_WHEEL)" ]; then \
	  echo "install-zonos: $(ZONOS_WHEEL) not found; tests on the real Zonos library will fail under CI=true"; \
	else \
	  echo "installing the Zonos library and its dependencies" && \
	  $(BIN)/pip install -q transformers inflect kanjize phonemizer sudachipy sudachidict-core safetensors \
	    huggingface-hub tqdm soundfile && \
	  { $(BIN)/python -c "import sudachidict_full" 2>/dev/null || \
	    $(BIN)/pip install -q ./tools/zonos-cpu/sudachidict_full; } && \
	  { $(BIN)/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchaudio') is None)" || \
	    $(BIN)/python tools/zonos-cpu/torchaudio_python_only.py; } && \
	  $(BIN)/pip install -q --no-deps "$(ZONOS_WHEEL)" && \
	  $(BIN)/python -c "import zonos.model, zonos.conditioning"; \
	fi

# Same deployment as `serve run $(SERVE_CONFIG)` (the plain way), plus a graceful drain on
# SIGTERM/SIGINT: requests in flight finish (up to the Ingress graceful_shutdown_timeout_s).
run: install spoken-cache
	mkdir -p data
	$(BIN)/python -m serve_app.launch --config $(SERVE_CONFIG) --port 8000 --host 0.0.0.0

test: install-test spoken-cache
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
