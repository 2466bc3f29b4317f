# Two commands on a fresh machine: `make sandbox` (run) and `make test` (every test).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: sandbox test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

sandbox: $(BIN)/.installed
	$(BIN)/hitl-bridge serve --sandbox

# Four test processes on two cores: the suite mostly waits (on servers it starts, on
# workers, on the browser), 3 min of CPU in 6 min of a lone run. One file per process, so
# a module's servers start once.
test: $(BIN)/.installed
	$(BIN)/pytest -q -n 4 --dist loadfile

# Benchmarks (a few minutes; loopback only): bench/results/<date>.json and .md. More:
# make bench BENCH_ARGS="--full --database-url postgresql://..." (see bench/README.md).
bench: $(BIN)/.installed
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
