# Cutover developer entry points. `make test` and `make demo` bootstrap .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: test lint typecheck unit demo bench bench-extract bench-flip bench-api bench-delta clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null || { echo "error: Python 3.11+ is needed (found: $(PYTHON)); run make PYTHON=/path/to/python3.11" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' editable finder; these links give it the installed import names.
typecheck: $(STAMP)
	@mkdir -p .typecheck/cutover
	@ln -sfn ../../agent .typecheck/cutover/agent
	@ln -sfn ../../controller .typecheck/cutover/controller
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/python -m cutover.controller.demo

# Benchmarks print ratios against baselines measured in the same run (bench/README.md).
bench: bench-extract bench-flip bench-api

bench-extract: $(STAMP)
	$(BIN)/python bench/extract.py

bench-flip: $(STAMP)
	$(BIN)/python bench/flip.py

bench-api: $(STAMP)
	$(BIN)/python bench/api.py

bench-delta: $(STAMP)
	$(BIN)/python bench/delta.py

clean:
	rm -rf $(VENV) .typecheck .mypy_cache .ruff_cache .pytest_cache
