# Two commands do all the set-up: `make demo` and `make test` (`make test-fast` skips the slow tests).
# Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The embedded Prefect server needs 10-15 s to start on a 2-core machine; Prefect's default limit is 20 s.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test test-fast ui bench bench-quality lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## run the pipeline end to end on built-in sample photographs
	$(BIN)/pixelmill demo --dir ./pixelmill-demo

test: $(STAMP)  ## the test suite (real Prefect server, real S3 server, real images); the 25 slowest tests at the end
	$(BIN)/python -m pytest --durations=25

test-fast: $(STAMP)  ## the suite without the tests marked slow: under 3 minutes on 2 cores
	$(BIN)/python -m pytest -m "not slow" --durations=10

ui: $(STAMP)  ## serve the Prefect UI on the embedded server's database: http://127.0.0.1:4200
	$(BIN)/prefect server start

bench: $(STAMP)  ## benchmarks: JSON on stdout, ratios against a baseline measured in the same run
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/crappify.py
	$(BIN)/python bench/train.py throughput

bench-quality: $(STAMP)  ## x2 super-resolution trained for 20 CPU minutes, scored against bicubic
	$(BIN)/python bench/train.py quality --minutes 20

lint: $(STAMP)  ## ruff, and the import contract (models <- tasks/core <- tasks rooms <- tasks/steps <- flows)
	$(BIN)/ruff check flows tasks models tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_imports.py

clean:
	rm -rf pixelmill-demo pixelmill-workspace .pytest_cache
