# Quick start: `make demo` (set up + run the demo manifest on Ray), `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/demo
CHROMIUM ?= /usr/bin/chromium

.PHONY: install chromium demo test test-fast bench clean

$(VENV)/.installed: pyproject.toml requirements/dev-constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/dev-constraints.txt torch
	$(PY) -m pip install --quiet -c requirements/dev-constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The report test loads pages in Debian's headless chromium: installed with apt-get when it is
# missing and we are root (a CI machine); otherwise a note says how to get it.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "note: the report test needs chromium (sudo apt-get install chromium)"; fi

chromium: $(CHROMIUM)

demo: install
	rm -rf $(OUT)
	$(PY) -m editflow run manifests/demo.jsonl -o $(OUT) --executor ray --report
	@echo "demo images:  $(OUT)/images"
	@echo "demo report:  $(OUT)/report/index.html"
	@echo "demo results: $$(ls $(OUT)/results/*.parquet)"

test: install $(CHROMIUM)
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

bench: install
	$(PY) -m bench.bench_runners

clean:
	rm -rf $(VENV) out bench/out .pytest_cache
