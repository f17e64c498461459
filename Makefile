# Two commands: `make demo` and `make test`. Both create .venv/ and install the project (with its test
# extras, which are small) when .venv/ is missing or pyproject.toml changed. `make test` also installs the
# Debian packages the tests use (PostgreSQL, Chromium) when they are missing: scripts/test-deps.sh.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(STAMP)
	$(PY) -m abray.cli demo

test: $(STAMP)
	scripts/test-deps.sh
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/optimizer_step.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
