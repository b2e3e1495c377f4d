# Two commands do all the set-up: `make run` and `make test` (`make dev` while coding).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
STAMP := $(VENV)/.installed
# Tests and tools (pytest, ruff, schemathesis, playwright) come from the development lock, on top.
DEV_STAMP := $(VENV)/.installed-dev

# The quick start's secret key: generated once, kept out of git (var/ is ignored).
SECRET_KEY_FILE := var/secret_key
# collectstatic runs again only when a static file or a package changed (it takes seconds).
STATIC_MANIFEST := staticfiles/staticfiles.json
STATIC_SOURCES := $(shell find static */static -type f 2>/dev/null)

.PHONY: run dev test install install-dev migrate seed static lint format bench worker beat clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	touch $(STAMP)

install: $(STAMP)

$(DEV_STAMP): requirements-dev.lock $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-dev.lock
	touch $(DEV_STAMP)

# The Python client (clients/python) is installed editable from this checkout, so its tests
# run the code here; installed again only when the one installed is not this checkout's.
CLIENT := clients/python
install-dev: $(DEV_STAMP)
	@$(BIN)/python -c 'import entitlements_client as c, pathlib as p, sys; sys.exit(not p.Path(c.__file__).resolve().is_relative_to(p.Path("$(CLIENT)").resolve()))' 2>/dev/null \
	  || $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e $(CLIENT)

migrate: install
	$(BIN)/python manage.py migrate --noinput

seed: migrate
	PORT=$(PORT) $(BIN)/python manage.py seed_demo  # its emails link to this PORT

$(SECRET_KEY_FILE): | $(STAMP)
	mkdir -p $(@D)
	umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))' > $@.tmp
	mv $@.tmp $@

# DEBUG off: the hashed, compressed files of whitenoise's manifest storage.
$(STATIC_MANIFEST): $(STATIC_SOURCES) requirements.lock | $(STAMP) $(SECRET_KEY_FILE)
	DJANGO_DEBUG=false $(BIN)/python manage.py collectstatic --noinput -v0
	touch $@

static: $(STATIC_MANIFEST)

# The quick start: gunicorn with threads, DEBUG off, a connection per request
# (entitlements_site/gunicorn_conf.py).
run: $(SECRET_KEY_FILE) seed static
	DJANGO_DEBUG=false PORT=$(PORT) $(BIN)/gunicorn -c entitlements_site/gunicorn_conf.py

# Development: Django's autoreloading server with DEBUG on. It runs a thread per request, so
# no connection is kept past its request.
dev: seed
	DJANGO_DEBUG=true DB_CONN_MAX_AGE=0 PORT=$(PORT) $(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint  # lint installs the development tools and the Python client
	$(BIN)/python manage.py makemigrations --check --dry-run > /dev/null
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install-dev
	$(BIN)/python bench/run.py $(BENCH_ARGS)

worker: install
	$(BIN)/celery -A entitlements_site worker --loglevel=info

beat: install
	$(BIN)/celery -A entitlements_site beat --loglevel=info --scheduler django_celery_beat.schedulers:DatabaseScheduler

clean:
	rm -rf $(VENV) var db.sqlite3 staticfiles
