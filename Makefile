# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# PostgreSQL everywhere. `make test` uses TEST_DATABASE_URL if given, else PostgreSQL on
# 127.0.0.1:5432 if it answers, else an embedded PostgreSQL (platform_site/localdb.py).
TEST_DATABASE_URL ?=
PYTEST_ARGS ?= -n 2
LOCALDB := $(BIN)/python -m platform_site.localdb

.PHONY: run demo-database test setup lint migrations-check clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) is needed (set PYTHON=... to use another)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

# The demo on its own embedded PostgreSQL (never DATABASE_URL from .env): migrations, demo
# data, one worker and the web server; Ctrl-C stops them all.
run: setup
	$(LOCALDB) serve

# The demo database alone: migrations and demo data on .localdb/demo, nothing served.
demo-database: setup
	$(LOCALDB) serve --prepare-only

test: setup
	DEBUG=1 TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(LOCALDB) test -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

migrations-check: setup
	DEBUG=1 TEST_DATABASE_URL=$(TEST_DATABASE_URL) $(LOCALDB) test -- $(BIN)/python manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) .localdb staticfiles .pytest_cache .ruff_cache
