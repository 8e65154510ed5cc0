# The two commands: `make demo` and `make test`. Both work on a fresh Debian machine with Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest sysdeps-test sysdeps-demo venv clean wheel-check bench

demo: sysdeps-demo $(STAMP)
	$(BIN)/resonera demo $(DEMO_ARGS)

test: sysdeps-test $(STAMP) lint typecheck pytest

sysdeps-test:
	@scripts/sysdeps.sh test

sysdeps-demo:
	@scripts/sysdeps.sh demo

# strict editable mode lets mypy see the namespace packages; re-run when files are added.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml $(shell find common device server hardware provisioning stack \( -name '*.py' -o -name '*.c' \) 2>/dev/null) setup.py
	flock /tmp/resonera-venv.lock $(BIN)/python -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy -p resonera.common -p resonera.device -p resonera.server -p resonera.hardware -p resonera.provisioning -p resonera.stack
	$(BIN)/mypy tests benchmarks

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo-output device/safety/_cascade*.so
