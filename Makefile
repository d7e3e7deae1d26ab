# edgevae developer and quickstart targets. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench-quality clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,dev]"
	touch $(STAMP)

setup: $(STAMP)

# Train on the embedded MNIST digits, export a bundle, score digits and outliers, generate a grid.
demo: $(STAMP)
	bash scripts/demo.sh

# The test suite, then the strict type check of the runtime, export and the CLI.
test: $(STAMP)
	$(BIN)/python -m pytest
	$(BIN)/python scripts/typecheck.py

# Ten one-class models + baselines + the all-digit model; writes docs/benchmarks.md (about 16 min here).
bench-quality: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,dev,bench]"
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf demo .pytest_cache
