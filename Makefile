# The two commands: `make run` starts the backend, `make test` runs lint, the import contracts and the whole suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean mutate mutate-results

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when a requirements file changed.
$(STAMP): $(PY) requirements.txt requirements-dev.txt pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/gem-labeler serve

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest

# Mutation testing (mutmut, config in pyproject.toml [tool.mutmut]); slow, NOT part of `make test`.
# One module: make mutate MUTANTS='gem_engine.rle*'; the scores: make mutate-results.
MUTANTS ?=
mutate: $(STAMP)
	env -u PYTHONPATH $(VENV)/bin/mutmut run $(MUTANTS)

mutate-results: $(STAMP)
	env -u PYTHONPATH $(VENV)/bin/mutmut results --all true | sed -E 's/^ *//; s/\.x(_|ǁ)[^:]*:/ /' | sort | uniq -c

clean:
	rm -rf mutants $(VENV) .pytest_cache .ruff_cache .import_linter_cache
