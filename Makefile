# Two commands: `make demo` and `make test`. Both create .venv/ and install the project into it when .venv/ is
# missing or pyproject.toml changed, showing pip's progress: `make demo` abray and what it runs on (PyTorch, Ray,
# the service), `make test` also the test extras (pytest, hypothesis, Playwright) and the Debian packages the
# tests use (PostgreSQL, Chromium) when they are missing: scripts/test-deps.sh.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
INSTALLED_TEST := $(VENV)/.installed-test
DEMO_FLAGS ?=  # more `abray demo` flags, e.g. `make demo DEMO_FLAGS="--epochs 5"` (tests/test_quickstart.py: 1 epoch)

.PHONY: demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): pyproject.toml | $(PY)
	@echo "installing abray into $(VENV)/ (PyTorch and Ray: about 6 GB and a few minutes the first time)"
	$(PY) -m pip install --progress-bar on -e .
	touch $@

$(INSTALLED_TEST): $(INSTALLED)
	@echo "installing abray's test extras into $(VENV)/"
	$(PY) -m pip install --progress-bar on -e '.[test]'
	touch $@

demo: $(INSTALLED)
	$(PY) -m abray.cli demo $(DEMO_FLAGS)
	@echo "abray is installed in $(VENV)/: \`source $(VENV)/bin/activate\` puts the \`abray\` command on your PATH" \
	      "(or run $(VENV)/bin/abray); README.md's quickstart goes on from here"

test: $(INSTALLED_TEST)
	scripts/test-deps.sh
	$(PY) -m pytest

bench: $(INSTALLED)
	$(PY) benchmarks/optimizer_step.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
