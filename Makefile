# Two commands a newcomer needs (see README):
#   make demo   installs everything and replays ML-100K, printing each window's trending items
#   make test   installs everything (Python packages, Chromium, the Kafka jars) and runs all checks
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test lint unit bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet -e '.[all]'
	touch $(STAMP)

setup: $(STAMP)

# Debian's Chromium for the widget's browser tests (Playwright drives it; it never downloads one).
system-deps:
	bash scripts/system-deps.sh

demo: setup
	$(BIN)/trail replay ml-100k --window 7d --scorer trail --print-top 5 --explain-top 5

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup system-deps lint
	$(BIN)/pytest

unit: setup
	$(BIN)/pytest tests/unit tests/model schemas streams/trend

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
