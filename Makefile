# edgevae developer and quickstart targets. Everything runs inside .venv (created on first use).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench-quality clean embed-setup serve-web

# The filter silences setuptools' note on every editable install of a package whose folders are mapped (package-dir),
# "be careful with folders ... with the same name as your package", which pip 26 shows even with --quiet.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,dev,scale]"
	touch $(STAMP)

setup: $(STAMP)

# Train on the embedded MNIST digits, export a bundle, score digits and outliers, generate a grid.
demo: $(STAMP)
	bash scripts/demo.sh

# The test suite, then the strict type check of the runtime, export and the CLI.
test: $(STAMP) embed-setup
	$(BIN)/python -m pytest
	$(BIN)/python scripts/typecheck.py

# npm packages of the Node.js and browser programs (embed/), when npm is here; without it their tests skip.
# onnxruntime-node's install script would fetch GPU libraries: skipped, the CPU binary is in the package.
EMBED_NPM := embed/node/node_modules/.package-lock.json embed/web/node_modules/.package-lock.json
embed-setup: $(EMBED_NPM)
embed/%/node_modules/.package-lock.json: embed/%/package-lock.json
	@if command -v npm >/dev/null; then cd embed/$* && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the embed tests of embed/$* will be skipped"; fi

# The browser page with a bundle beside it, on 127.0.0.1:8000 (BUNDLE defaults to the demo's); the server is
# Python's standard library alone, so it needs no environment beyond the page's npm packages.
BUNDLE ?= demo/bundle
serve-web: embed-setup
	python3 scripts/serve_web.py $(BUNDLE)

# Ten one-class models + baselines + the all-digit model; writes docs/benchmarks.md (about 34 min here).
bench-quality: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[train,dev,bench]"
	$(BIN)/python benchmarks/quality.py

clean:
	rm -rf demo .pytest_cache
