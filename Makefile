# livetag: `make up` runs it, `make test` checks it. Both start with `make install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the test suite needs (installed when run as root).
TEST_APT_PACKAGES :=
STAMP := $(VENV)/.installed

.PHONY: install system-packages up test lint typecheck pytest bench clean

install: $(STAMP)
	$(BIN)/livetag models fetch

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

system-packages:
ifneq ($(strip $(TEST_APT_PACKAGES)),)
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEST_APT_PACKAGES); \
	else \
		echo "not root: make sure these Debian packages are installed: $(TEST_APT_PACKAGES)"; \
	fi
endif

up: install
	$(BIN)/livetag up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install system-packages
	$(BIN)/pytest

test: lint typecheck pytest

bench: install
	$(BIN)/python -m tests.bench.broker

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
