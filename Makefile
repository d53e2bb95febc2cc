# Two entry points a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first and pinned, so nothing later can pull the CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's adb client: a test drives the ADB emulator with it. Installed when missing and we may (root + apt).
system-deps:
	@command -v adb >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq adb >/dev/null) || \
		echo "note: Debian's adb not installed; its test is skipped outside CI (apt-get install adb)"; }

demo: $(STAMP)
	$(BIN)/dnas quickstart

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
