# halftunes: every target creates .venv on first use, so a fresh clone needs only Python 3.11+.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CLI_STAMP := $(VENV)/.installed-cli

.PHONY: install dev test test-floor lint format demo bench chaos clean

# `make install`: the command line alone. `make dev` (and every target that tests or checks):
# the test and lint tools too (Dask, moto, pyarrow, mypy ...), in the same .venv.
$(CLI_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(CLI_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $(CLI_STAMP)

install: $(CLI_STAMP)

dev: $(STAMP)

# Two test processes per core: most tests wait (on servers, throttled transfers, other
# processes) more than they compute; 2 cores: 4 workers, 137 s -> 110 s.
TEST_WORKERS ?= $(shell $(PYTHON) -c 'import os; print(2 * (os.cpu_count() or 1))')
test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS)

# The body reader relies on urllib3 2 internals: run the transfer tests against the oldest
# urllib3 that pyproject admits too (the newest is what `make test` installs).
URLLIB3_FLOOR := 2.2.0
test-floor: $(STAMP)
	rm -rf $(VENV)/urllib3-floor
	$(BIN)/python -m pip install --quiet --target $(VENV)/urllib3-floor urllib3==$(URLLIB3_FLOOR)
	PYTHONPATH=$(VENV)/urllib3-floor $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_body_io.py tests/test_download.py tests/test_server_habits.py

lint: $(STAMP)
	$(BIN)/ruff format --check halftunes_cli tests bench scripts
	$(BIN)/ruff check halftunes_cli tests bench scripts
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format halftunes_cli tests bench scripts
	$(BIN)/ruff check --fix halftunes_cli tests bench scripts

demo: $(CLI_STAMP)
	$(BIN)/python scripts/demo.py

chaos: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_chaos.py --chaos-rounds=320 --storm-seconds=60 --odd-examples=300 -s

bench: $(STAMP)
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
