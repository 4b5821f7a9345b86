# Petra: the two entry points for a fresh Debian machine (run as root) are
#   make demo   and   make test
# Both call `make setup` first, which installs only what is missing.

VENV      := .venv
PYTHON    := /usr/bin/python3
BIN       := $(VENV)/bin
SRC_DIRS  := src tests benchmarks
# Downloaded .debs and apt indices shared by test runs, so a second run does not download again.
export PETRA_TEST_CACHE ?= /var/tmp/petra-test-cache

.PHONY: setup demo test lint unit integration soak bench clean

setup: $(VENV)/.installed
	@packaging/install-debian-packages packaging/debian-packages.txt

# The venv sees Debian's PyGObject and libostree typelib (--system-site-packages).
$(VENV)/.installed: pyproject.toml
	@packaging/install-debian-packages packaging/debian-packages.txt
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/petra demo --workdir demo

lint: setup
	$(BIN)/ruff check $(SRC_DIRS)
	$(BIN)/ruff format --check $(SRC_DIRS)
	$(BIN)/mypy src

unit: setup
	$(BIN)/pytest -m unit

integration: setup
	$(BIN)/pytest -m integration

test: lint unit integration

# Not in CI: the crash-safety kill harness with many more kills (KILLS=N, default 500), then
# rounds of power cuts of a VM's deployment on trial (POWER_CUT_ROUNDS, 2 cuts and a boot
# each, about 3 minutes a round under TCG). Each prints its seed (and how many kills landed
# mid-write); PETRA_KILL_SEED=S replays a run.
KILLS ?= 500
LAYER_KILLS ?= 100
PIN_KILLS ?= 200
POWER_CUT_ROUNDS ?= 10
soak: setup
	PETRA_KILLS=$(KILLS) PETRA_LAYER_KILLS=$(LAYER_KILLS) PETRA_PIN_KILLS=$(PIN_KILLS) PETRA_KILL_VERIFY=all \
		$(BIN)/pytest -m integration tests/integration/test_crash.py
	PETRA_POWER_CUT_ROUNDS=$(POWER_CUT_ROUNDS) \
		$(BIN)/pytest -m integration tests/integration/test_vm.py -k power_cuts

bench: setup
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) demo build
