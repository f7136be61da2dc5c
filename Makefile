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

# The main job on the embedded default: bundled OpenI reports → instruction data, then impressions for
# six validate findings from the shipped model (models/radgpt-smollm2-135m), with the prior cases they lean on.
demo: $(STAMP)
	$(VENV)/bin/radgpt prepare data/openi/indiana_reports.csv --out $(DEMO_OUT)/prepared
	mkdir -p $(DEMO_OUT) && head -n 6 data/openi/clin-summ/validate.jsonl > $(DEMO_OUT)/findings.jsonl
	$(VENV)/bin/radgpt impress $(DEMO_OUT)/findings.jsonl --field inputs --id-field idx --with-findings \
		--model models/radgpt-smollm2-135m --out $(DEMO_OUT)/impressions.jsonl
	$(PY) -c "import json; [print(f\"\nFINDINGS:   {r['findings']}\nIMPRESSION: {r['impression']}\") for r in map(json.loads, open('$(DEMO_OUT)/impressions.jsonl'))]"

test: $(STAMP)
	$(PY) -m pytest $(if $(filter true,$(CI)),--runslow,) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out
