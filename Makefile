# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The suite runs on PostgreSQL (locks, concurrency and defaults are tested for real).
# Override with TEST_DATABASE_URL=sqlite:///... to run it on SQLite (PostgreSQL-only tests skip).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
PYTEST_ARGS ?= -n 2

.PHONY: run demo-database test setup lint migrations-check clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) is needed (set PYTHON=... to use another)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

# `make run` works on a database of its own, named here so that a DATABASE_URL in .env
# (which may be production's) is never used: variables given on the command line win over
# .env. DEMO_DATABASE=1 tells seed_demo that this is that database; it refuses any other.
DEMO_DATABASE_URL := sqlite:///$(CURDIR)/db.sqlite3
DEMO_ENV := DEBUG=1 DEMO_DATABASE=1 DATABASE_URL=$(DEMO_DATABASE_URL)

run: setup demo-database
	@echo "Serving the console at http://127.0.0.1:8000/admin/ (Ctrl-C stops it)"
	$(DEMO_ENV) $(BIN)/python manage.py runserver 127.0.0.1:8000

demo-database: setup
	$(DEMO_ENV) $(BIN)/python manage.py migrate --noinput
	$(DEMO_ENV) $(BIN)/python manage.py seed_demo

test: setup
	DEBUG=1 DATABASE_URL=$(TEST_DATABASE_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

migrations-check: setup
	DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles .pytest_cache .ruff_cache
