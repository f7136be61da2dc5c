# Two commands on a fresh machine:
#   make demo   — set up .venv and run radgpt on the bundled OpenI data
#   make test   — set up .venv and run the test suite (slow tests too when CI=true)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO_OUT ?= out/demo

.PHONY: demo test setup bench clean

setup: $(STAMP)

# torch first and pinned: 2.13.0 is the CPU wheel on disk here; an unpinned torch pulls CUDA builds.
$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/radgpt prepare data/openi/indiana_reports.csv --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest $(if $(filter true,$(CI)),--runslow,) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out
