# The two commands of the README: `make demo` (main job) and `make test` (whole suite).
# Each creates .venv and installs the project first, so both work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-faults lint bench clean

$(VENV)/.installed: pyproject.toml scripts/venv.sh
	bash scripts/venv.sh $(VENV)

demo: $(VENV)/.installed
	$(PY) -m workers.demo

test: $(VENV)/.installed
	bash scripts/test.sh $(PY)
	$(VENV)/bin/ruff check flowmesh workers tests bench
	$(VENV)/bin/ruff format --check flowmesh workers tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --config-file tests/mypy.ini

# The fault-injection suite alone (it also runs as part of `make test`).
test-faults: $(VENV)/.installed
	$(PY) -m pytest -q tests/faults

bench: $(VENV)/.installed
	$(PY) -m bench.run

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check flowmesh workers tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --config-file tests/mypy.ini

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis

# Re-record tests/golden/histories after an intended change to workflow code (see README).
.PHONY: golden
golden: $(VENV)/.installed
	$(PY) -m tests.golden.record
