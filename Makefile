# The two set-up commands: `make run` (local stack + serve) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test check unit integration schemas stack-up stack-down kafka-jars clean bench soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

kafka-jars:
	deploy/local/kafka.sh fetch

# Local stack (PostgreSQL + single-node KRaft Kafka), migrations, every role
# in one process in the foreground; Ctrl-C stops all of it.
run: $(STAMP) kafka-jars
	deploy/local/run.sh

check: $(STAMP)
	$(BIN)/ruff check worker tests bench
	$(BIN)/ruff format --check worker tests bench
	$(BIN)/mypy --strict worker bench

# The whole suite; starts a throwaway PostgreSQL and Kafka unless
# DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS point at existing ones.
test: check kafka-jars
	$(BIN)/pytest -p no:cacheprovider -q --durations=12 $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest -q -m "not integration" $(PYTEST_ARGS)

# Regenerate the public contracts in schemas/ from the pydantic models.
schemas: $(STAMP)
	$(BIN)/python -m worker.contracts
	$(BIN)/python -m worker.roles.api
	$(BIN)/python -m worker.roles.receiver

stack-up: kafka-jars
	deploy/local/postgres.sh start
	deploy/local/kafka.sh start

stack-down:
	-deploy/local/kafka.sh stop
	-deploy/local/postgres.sh stop

clean: stack-down
	rm -rf .stack $(VENV)

# Benchmarks against baselines measured in the same run. Not part of
# `make test` (tests/test_bench_smoke.py runs the smoke size there). Own
# PostgreSQL/Kafka under .stack/bench unless DATABASE_URL/KAFKA_BOOTSTRAP_SERVERS.
# Every headline is the median of 3 runs unless --repeat says otherwise; a
# failed correctness check fails the target.
# e.g. make bench BENCH_ARGS="--only apply hot_sku --repeat 5"
bench: $(STAMP) kafka-jars
	@command -v wrk >/dev/null || echo "bench: wrk missing (apt-get install -y wrk); ingest uses the Python load generator, which caps the bare baseline"
	$(BIN)/python -m bench $(BENCH_ARGS)

# Bounded soak, loopback only: consumer and receiver SIGKILL, consumer group
# 1 -> 3 -> 1, PostgreSQL stop/start and crash, one of three brokers killed,
# repeated with more load (1,000 admissions at 80/s per run) for SOAK_MINUTES.
# Figures in .stack/soak/soak-summary.json; exit 1 if any guarantee broke.
SOAK_MINUTES ?= 5
soak: $(STAMP) kafka-jars
	$(BIN)/python -m tests.soak --minutes $(SOAK_MINUTES) --cluster $(SOAK_ARGS)
