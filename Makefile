# Two entry points a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-deps demo test lint docs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first and pinned, so nothing later can pull the CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's adb client (a test drives the ADB emulator with it), the PostgreSQL server binaries (the tests
# start their own throwaway server, found through pg_config --bindir), Chromium (the dashboard's browser
# tests drive it through Playwright) and a C compiler (the perf-test stand-in is built as a real ELF linking
# libc++_shared.so, so the C++ runtime and ABI checks have something to check). Installed when missing and
# we may (root + apt); without them their tests skip outside CI and fail in CI.
apt_install = [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1) >/dev/null

system-deps:
	@command -v adb >/dev/null || { $(call apt_install,adb); } || \
		echo "note: Debian's adb not installed; its test is skipped outside CI (apt-get install adb)"
	@[ -x "$$(pg_config --bindir 2>/dev/null)/initdb" ] || { $(call apt_install,postgresql); } || \
		echo "note: PostgreSQL server not installed; its tests are skipped outside CI (apt-get install postgresql)"
	@command -v chromium >/dev/null || { $(call apt_install,chromium); } || \
		echo "note: Chromium not installed; the dashboard's browser tests are skipped outside CI (apt-get install chromium)"
	@command -v cc >/dev/null || { $(call apt_install,gcc libc6-dev); } || \
		echo "note: no C compiler; the perf-test build's libc++/ABI tests are skipped outside CI (apt-get install gcc)"

demo: $(STAMP)
	$(BIN)/dnas quickstart

# The suite in two parts (docs/testing.md). First every test that times nothing, spread over TEST_WORKERS
# processes (pytest-xdist; tests sharing a module's service or search stay on one worker); then the tests
# marked `serial`, which measure latency on this host and so run with nothing of ours beside them. Both parts
# always run; either failing fails the target.
TEST_WORKERS ?= auto

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(MAKE) docs
	status=0; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder -m "not serial" || status=$$?; \
	$(BIN)/python -m pytest -p no:xdist -m serial || status=$$?; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site, built strictly: a broken link or anchor, a missing page or include, or a docstring
# mkdocstrings cannot read fails the build (and so `make test` and CI). Offline: nothing is fetched. Into site/
# (ignored by git); `$(BIN)/mkdocs serve` previews it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build site *.egg-info
