# Two entry points, each makes its own environment on a fresh machine:
#   make demo   runs the main job on built-in defaults
#   make test   runs the whole test suite
# torch is installed first, pinned to 2.13.0: on a CPU-only machine this resolves to the
# CPU wheel, and the package's own `torch>=2.3` is then already satisfied.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.alflb-installed

.PHONY: demo test test-thorough lint bench docs env clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/alflb demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2

test-thorough: $(STAMP)
	$(BIN)/python -m pytest -n 2 --thorough

lint: $(STAMP)
	$(BIN)/ruff check alflb proofs_check simulations benchmarks tests

# The documentation site (API reference from the docstrings, theory, errors, the notebooks
# executed as a gallery) into site/; `make docs` installs the docs extra first.
docs: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --quiet

bench: $(STAMP)
	$(BIN)/python benchmarks/solvers.py
	$(BIN)/python benchmarks/simulator.py
	$(BIN)/python benchmarks/moe_layer.py
	$(BIN)/python benchmarks/import_time.py

clean:
	rm -rf $(VENV)
