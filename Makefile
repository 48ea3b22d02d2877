# Entry points shared by users and CI. Every target installs what it needs into .venv itself.
PYTHON ?= python3
VENV := .venv
# Supported Pythons: 3.11 (the default venv), 3.12 and 3.13. `make unit PY_VERSION=3.12` runs a
# target in its own venv (.venv-3.12) made with that interpreter, found under pyenv or on PATH.
PY_VERSION ?=
EXTRA_PY_VERSIONS := 3.12 3.13
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null || echo "$$HOME/.pyenv")
python_for = $(or $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python$(1)))),python$(1))
ifneq ($(PY_VERSION),)
VENV := .venv-$(PY_VERSION)
PYTHON := $(call python_for,$(PY_VERSION))
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# SQLAlchemy 2.0 is tested beside the 2.1 in the venv by overlaying it on PYTHONPATH.
SA20 := .cache/sqlalchemy-2.0$(if $(PY_VERSION),-py$(PY_VERSION))
# make faults-ci NATIVE=off: the span export path of every app the fault suite starts (auto, on or
# off: OTEL_DIST_NATIVE_EXPORT); unset, each app's own setting (default auto).
NATIVE ?=
NATIVE_ENV := $(if $(NATIVE),OTEL_DIST_NATIVE_EXPORT=$(NATIVE))
# make stack TOPOLOGY=scaled: an agent routing by trace id onto three gateway collectors.
TOPOLOGY ?= single

.PHONY: install dist demo test test-pythons lint typecheck unit integration bench-tools test-sqlalchemy-2.0 e2e stack stack-stop bench bench-quick faults faults-ci scale scale-ci clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## make dist: the sdist and the wheel in dist/, built by the PEP 517 front end (`python -m build`).
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .

## make demo: the example shop, instrumented, on SQLite, printing its telemetry as it arrives.
demo: $(STAMP)
	$(PY) -m examples.demo

## make test: lint, types, unit + integration tests. CI (.ci/run) also runs make e2e and make faults-ci.
test: lint typecheck unit integration test-sqlalchemy-2.0

# Everything we own is linted and format-checked.
LINTED := src tests examples stack bench deploy
# The load generator the benchmark smoke uses; installed here, never by a test.
WRK_VERSION := 4.1.0

## make test-pythons: the unit + integration tests on 3.12 and 3.13, each in its own venv.
test-pythons:
	status=0; for version in $(EXTRA_PY_VERSIONS); do \
	  $(MAKE) unit integration PY_VERSION=$$version || status=1; done; exit $$status

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)

## make typecheck: mypy strict on the package, the stack scripts, the bench and the test support.
typecheck: $(STAMP)
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict stack/postgres.py

## make unit: the tests that start no server (seconds to a minute).
unit: $(STAMP)
	$(VENV)/bin/pytest -q -m "not integration and not e2e and not stack and not faults and not scale"

## make integration: the tests that start real servers in subprocesses (and the bench smoke).
integration: $(STAMP) bench-tools
	$(VENV)/bin/pytest -q -m "integration and not e2e and not stack and not faults and not scale"

bench-tools:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	@wrk --version 2>&1 | grep -q "$(WRK_VERSION)" || \
	  (echo "bench-tools: wrk $(WRK_VERSION) is needed, found: $$(wrk --version 2>&1 | head -1)"; exit 1)

$(SA20)/.installed:
	$(PY) -m pip install --quiet --no-deps --target $(SA20) "sqlalchemy>=2.0,<2.1"
	touch $@

test-sqlalchemy-2.0: $(STAMP) $(SA20)/.installed
	PYTHONPATH=$(SA20) $(PY) -c "import sqlalchemy, sys; v = sqlalchemy.__version__; print('SQLAlchemy', v); sys.exit(not v.startswith('2.0.'))"
	PYTHONPATH=$(SA20) $(VENV)/bin/pytest -q tests/test_sqlalchemy.py

## make stack: build (cached under ~/.cache/otel-dist-stack) and start the Docker-free stack.
stack: $(STAMP)
	$(PY) stack/build.py
	$(PY) stack/run.py start --topology $(TOPOLOGY)

stack-stop:
	$(PY) stack/run.py stop

## make e2e: the stack's config checks and the end-to-end test on the real servers.
e2e: $(STAMP)
	$(PY) stack/build.py
	$(VENV)/bin/pytest -q -m "stack or e2e"

## make bench: no telemetry vs stock vs otel_dist side by side -> docs/performance.md, bench/results.json
bench: $(STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

## make bench-quick: the smoke of the benchmark that CI runs (fails on any error)
bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

## make faults: the fault and hostile-input suite at full scale -> README "Reliability" table
faults: $(STAMP)
	$(PY) stack/build.py
	rm -f .faults/results.jsonl
	$(NATIVE_ENV) OTEL_DIST_FAULTS=full $(VENV)/bin/pytest -q -s -m faults; status=$$?; \
	  $(PY) tests/faults/readme.py .faults/results.jsonl README.md && exit $$status

## make faults-ci: the same suite shortened (10 s outages, fewer requests); CI runs it with the
## native span export on and off (NATIVE=on / NATIVE=off)
faults-ci: $(STAMP)
	$(PY) stack/build.py
	$(NATIVE_ENV) OTEL_DIST_FAULTS=ci $(VENV)/bin/pytest -q -s -m faults

## make scale: agent + gateway collectors under load and failure, full scale -> README "Scaling"
scale: $(STAMP)
	$(PY) stack/build.py
	rm -f .scale/results.jsonl
	OTEL_DIST_SCALE=full $(VENV)/bin/pytest -q -s -m scale

## make scale-ci: the same suite at a short scale (20 s of load, 10 s capacity windows); CI runs it
scale-ci: $(STAMP)
	$(PY) stack/build.py
	OTEL_DIST_SCALE=ci $(VENV)/bin/pytest -q -s -m scale

clean:
	rm -rf .venv $(addprefix .venv-,$(EXTRA_PY_VERSIONS)) .cache .bench .scale .pytest_cache .mypy_cache .ruff_cache dist
