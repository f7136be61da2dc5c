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
	$(VENV)/bin/radgpt prepare data/openi/indiana_reports.csv --out $(DEMO_OUT)/prepared --force
	mkdir -p $(DEMO_OUT) && head -n 6 data/openi/clin-summ/validate.jsonl > $(DEMO_OUT)/findings.jsonl
	$(VENV)/bin/radgpt impress $(DEMO_OUT)/findings.jsonl --field inputs --id-field idx --with-findings \
		--model models/radgpt-smollm2-135m --out $(DEMO_OUT)/impressions.jsonl
	$(PY) -c "import json; [print(f\"\nFINDINGS:   {r['findings']}\nIMPRESSION: {r['impression']}\") for r in map(json.loads, open('$(DEMO_OUT)/impressions.jsonl'))]"

test: $(STAMP)
	$(PY) -m pytest $(if $(filter true,$(CI)),--runslow,) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out

# A throwaway PostgreSQL server for trying the reader study on PostgreSQL and for running the study tests
# against it: Debian's postgresql package (installed here if missing and we are root), a cluster in
# $(PG_DIR), 127.0.0.1 only, trust authentication. `make postgres` prints the URL; `make postgres-stop` ends it.
PG_DIR ?= /tmp/radgpt-postgres
.PHONY: postgres postgres-stop

postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
		else echo "install Debian's PostgreSQL first: sudo apt-get install postgresql"; exit 1; fi
	@url=$$($(PYTHON) radgpt/study/pgserver.py start $(PG_DIR)) && \
		echo "PostgreSQL: $$url" && \
		echo "  tests:  export RADGPT_TEST_POSTGRES_URL=$$url   (then: make test, or pytest tests/test_study*.py)" && \
		echo "  study:  radgpt study create --db $$url ...   then   radgpt study serve --db $$url" && \
		echo "  stop:   make postgres-stop"

postgres-stop:
	$(PYTHON) radgpt/study/pgserver.py stop $(PG_DIR)
	rm -rf $(PG_DIR)
