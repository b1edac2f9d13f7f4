# The project's commands. `make demo` and `make test` install what they need first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# LocalStack runs from a virtual environment of its own: its pinned dependencies would
# conflict with the project's.
LS_VENV  := .venv-localstack
LS_STAMP := $(LS_VENV)/.installed-stamp

.PHONY: install localstack-venv demo test test-fast lint bench clean

install: $(STAMP)

localstack-venv: $(LS_STAMP)

$(LS_STAMP): localstack/requirements-host.txt
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet -r localstack/requirements-host.txt
	touch $(LS_STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[server,local,dev]"
	touch $(STAMP)

# Start the local cloud, run the fan-out example on it, and stop everything again.
demo: install
	$(VENV)/bin/mn up
	$(PY) examples/demo.py; status=$$?; $(VENV)/bin/mn down; exit $$status

# The end-to-end tests run against the embedded emulator and against LocalStack, which
# they start from its own virtual environment (MN_E2E_TARGETS=emulator skips it).
test: install localstack-venv lint
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not e2e"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/bench_calls.py

clean:
	rm -rf $(VENV) $(LS_VENV) .pytest_cache
