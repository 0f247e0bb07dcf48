# A new user needs only Python: every target makes .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-given test-pgbouncer test-cluster test-fast fuzz lint bench soak clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,lint]'
	touch $@

install: $(BIN)/.installed

## run: the whole service on this machine (embedded PostgreSQL, Redis and Kafka unless SAMPLEDB_* URLs are set)
run: install
	$(BIN)/sampledb-jobs dev

## test: the test suite against real servers (embedded ones unless SAMPLEDB_* URLs are set)
test: install
	$(BIN)/python -m pytest

## test-given: the same suite on servers this machine already runs (PostgreSQL 15, Redis 7 and RabbitMQ here): the
## run makes and drops a database of its own on that PostgreSQL and a virtual host of its own on that RabbitMQ
## (with rabbitmqctl), Celery's broker, and uses Redis database 13 (7 and 11 too) of that Redis
GIVEN_DATABASE_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
GIVEN_REDIS_URL ?= redis://127.0.0.1:6379/13
GIVEN_BROKER_URL ?= amqp://guest:guest@127.0.0.1:5672/
GIVEN = SAMPLEDB_DATABASE_URL=$(GIVEN_DATABASE_URL) SAMPLEDB_REDIS_URL=$(GIVEN_REDIS_URL)
test-given: install
	$(GIVEN) SAMPLEDB_CELERY_BROKER_URL=$(GIVEN_BROKER_URL) $(BIN)/python -m pytest

## test-pgbouncer: the API and Celery tests through a PgBouncer in transaction mode (Debian's pgbouncer) that the run
## starts in front of the given PostgreSQL (Redis stays Celery's broker)
PGBOUNCER_TESTS ?= tests/test_api_*.py tests/test_search.py tests/test_submissions.py tests/test_states.py \
	tests/test_pgbouncer.py tests/test_celery_intake.py tests/test_celery_resilience.py tests/test_celery_dead.py \
	tests/test_celery_sweeps.py tests/test_celery_order.py
test-pgbouncer: install
	$(GIVEN) SAMPLEDB_DATABASE_POOLER=transaction $(BIN)/python -m pytest $(PGBOUNCER_TESTS)

## test-cluster: faults across hosts on a cluster of network namespaces (servers, two API hosts, two worker hosts),
## as root; prints each scenario's figures (tests/cluster, README "Several hosts")
test-cluster: install
	SAMPLEDB_TEST_CLUSTER=1 $(BIN)/python -m pytest -s -p no:cacheprovider tests/cluster

## test-fast: only the tests that need no server, in seconds (a server start fails the run)
test-fast: install
	TESTS_START_NO_SERVERS=1 $(BIN)/python -m pytest -m "not servers"

## fuzz: the OpenAPI fuzzing at 500 examples per operation and key (make test runs 50); SAMPLEDB_FUZZ_SEED=N repeats a run
fuzz: install
	SAMPLEDB_FUZZ_EXAMPLES=500 $(BIN)/python -m pytest -s tests/test_openapi_fuzz.py tests/test_fuzz.py

## lint: ruff (lint and format check) and mypy, as configured in pyproject.toml
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## bench: the benchmarks at a million jobs (see docs/BENCHMARKS.md)
bench: install
	$(BIN)/python -m bench

## soak: the service as `make run` runs it, under half its capacity with simulated analyzers, for SOAK_MINUTES (30);
## writes bench/results/soak-<date>.json and docs/soak-rss.png (see README, "Memory of a long run")
soak: install
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
