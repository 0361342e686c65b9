# Quick start: `make demo` (set up + run the demo manifest on Ray), `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/demo

.PHONY: install demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml requirements/dev-constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/dev-constraints.txt torch
	$(PY) -m pip install --quiet -c requirements/dev-constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf $(OUT)
	$(PY) -m editflow run manifests/demo.jsonl -o $(OUT) --executor ray
	@echo "demo images:  $(OUT)/images"
	@echo "demo results: $$(ls $(OUT)/results/*.parquet)"

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) -m bench.bench_runners

clean:
	rm -rf $(VENV) out bench/out .pytest_cache
