# The two commands: `make demo` and `make test`. Both work on a fresh Debian machine with Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Every Python package comes from a lock with hashes (requirements/*.txt, made by `make lock` from
# pyproject.toml's ranges): the same versions on every machine.
BUILD_LOCK := requirements/build.txt
DEV_LOCK := requirements/dev.txt
UV_VERSION := 0.13.8
TOOLS := .venv-tools

.PHONY: demo test lint typecheck pytest pytest-future pytest-unhurried pytest-realtime pytest-phased audit sbom sysdeps-test sysdeps-demo venv clean wheel-check bench lock

demo: sysdeps-demo $(STAMP)
	$(BIN)/resonera demo $(DEMO_ARGS)

test: sysdeps-test $(STAMP) lint typecheck audit pytest-phased

sysdeps-test:
	@scripts/sysdeps.sh test

sysdeps-demo:
	@scripts/sysdeps.sh demo

# pip, setuptools and wheel come from the build lock, and build PyAudio and our own package without
# an isolated build environment, so nothing unlocked is fetched at any step.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes -r $(BUILD_LOCK)

# The locked set first (--no-deps: exactly the lock), then our own package in strict editable mode,
# which lets mypy see the namespace packages; re-run when files are added.
$(STAMP): $(BIN)/python $(BUILD_LOCK) $(DEV_LOCK) pyproject.toml $(shell find common engine device server hardware provisioning stack \( -name '*.py' -o -name '*.c' \) 2>/dev/null) setup.py
	flock /tmp/resonera-venv.lock sh -c '$(BIN)/python -m pip install -q --require-hashes --no-deps --no-build-isolation -r $(DEV_LOCK) && PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict'
	touch $(STAMP)

# Refresh every lock from pyproject.toml's ranges (see "Updating a dependency" in the README). The
# role locks are resolved under the dev lock's pins, so a package has one version in all of them.
UV_COMPILE = $(TOOLS)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes
lock:
	test -x $(TOOLS)/bin/uv || { $(PYTHON) -m venv $(TOOLS) && $(TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION); }
	$(UV_COMPILE) $(UV_ARGS) pyproject.toml --extra dev -o $(DEV_LOCK)
	$(UV_COMPILE) $(UV_ARGS) requirements/build.in -c $(DEV_LOCK) -o $(BUILD_LOCK)
	$(UV_COMPILE) pyproject.toml --extra device --extra hardware -c $(DEV_LOCK) -o requirements/device.txt
	$(UV_COMPILE) pyproject.toml --extra server -c $(DEV_LOCK) -o requirements/server.txt

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy -p resonera.common -p resonera.engine -p resonera.device -p resonera.server -p resonera.hardware -p resonera.provisioning -p resonera.stack
	$(BIN)/mypy tests benchmarks scripts

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The date-handling suites once more with the wall clock a year ahead (libfaketime): they must pass
# on any day, not only today. `make pytest-future FUTURE=+730d` tries two years.
FUTURE ?= +365d
FUTURE_TESTS ?= tests/common tests/device tests/server tests/provisioning
pytest-future: $(STAMP)
	scripts/faketime-run $(FUTURE) $(BIN)/python -m pytest -q $(XDIST) -m "not real_clock and not dateless and not realtime" $(FUTURE_TESTS) $(PYTEST_ARGS)

# What `make test` runs: every test once and the date-handling ones a year ahead, each on two
# workers (pytest-xdist, a test file per worker at a time: most tests wait on brokers, servers and
# children, so two cores carry two), then the `realtime` tests last, alone and in one process (MCU
# watchdogs of 100 ms, sound recorded through PulseAudio, prompts against the clock: under other
# load they miss their marks).
XDIST ?= -n 2 --dist loadfile
pytest-phased: $(STAMP)
	$(MAKE) --no-print-directory pytest-unhurried
	$(MAKE) --no-print-directory pytest-future
	$(MAKE) --no-print-directory pytest-realtime

pytest-unhurried: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not realtime" $(PYTEST_ARGS)

pytest-realtime: $(STAMP)
	$(BIN)/python -m pytest -q -m realtime $(PYTEST_ARGS)

# Known vulnerabilities in the device's and the server's locked sets (pip-audit); says so in one line
# where the vulnerability database cannot be reached.
audit: $(STAMP)
	$(BIN)/python scripts/audit_locks.py requirements/device.txt requirements/server.txt

# CycloneDX SBOMs of the device's and the server's locked sets.
SBOM_DIR ?= build/sbom
sbom:
	mkdir -p $(SBOM_DIR)
	for role in device server; do \
	  PYTHONWARNINGS=ignore::UserWarning $(BIN)/cyclonedx-py requirements requirements/$$role.txt \
	    --pyproject pyproject.toml --of JSON --output-reproducible --validate \
	    -o $(SBOM_DIR)/resonera-$$role.cdx.json || exit 1; \
	done
	@echo "SBOMs in $(SBOM_DIR): resonera-device.cdx.json resonera-server.cdx.json"

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(TOOLS) build dist *.egg-info demo-output engine/safety/_cascade*.so
