# The two commands of the README: `make demo` and `make test` (both set up what they need).
PY ?= python3
VENV = .venv
BIN = $(VENV)/bin

.PHONY: setup demo test bench

$(BIN)/vxgate: setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

setup: $(BIN)/vxgate

demo: setup
	$(BIN)/vxgate demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/passthrough.py
