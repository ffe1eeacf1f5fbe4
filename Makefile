# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap uv and the venv themselves.
SHELL := /bin/bash
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv demo test test-long lint bench clean browser

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

venv: $(VENV)/.synced  ## create .venv from uv.lock (dev group and all extras)

demo: venv  ## run the main job offline on embedded defaults
	$(VENV)/bin/finops demo

browser:  ## Debian chromium for the dashboard's headless browser test (apt, as root; no-op when present)
	@if [ -f scripts/ensure_chromium.sh ]; then bash scripts/ensure_chromium.sh; fi

test: venv browser  ## the test suite (unit + integration, PostgreSQL and Airflow started by the tests)
	$(PY) -m pytest -m "not long" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi; exit $$rc

test-long: venv  ## long fuzz / soak variants
	$(PY) -m pytest -m long $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no long tests" >&2; exit 1; fi; exit $$rc

lint: venv  ## ruff + mypy
	$(VENV)/bin/ruff check finops_provider tests $(wildcard example_dags bench)
	$(VENV)/bin/ruff format --check finops_provider $(wildcard example_dags)
	$(VENV)/bin/mypy finops_provider

bench: venv  ## benchmarks: ratios against baselines run in the same process
	$(PY) -m bench

clean:
	rm -rf $(VENV) .tools demo-output
