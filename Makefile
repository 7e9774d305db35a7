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

# The benchmark runs on the interpreter scripts/install-vm.sh installs vxgate with (Debian's
# /usr/bin/python3 when there is one), in a venv of its own: what a site runs. A development
# interpreter built with --enable-shared (pyenv's default) runs vxgate a fifth slower.
BENCH_PY ?= $(shell [ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo $(PY))
BENCH_VENV = .venv-bench

$(BENCH_VENV)/bin/salmon: setup.py
	$(BENCH_PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -e .
	@touch $@

bench: $(BENCH_VENV)/bin/salmon
	$(BENCH_VENV)/bin/python bench/passthrough.py $(ARGS)
