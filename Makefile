# stagemfu: two commands do everything on a fresh Linux machine with Python >= 3.10.
#   make demo   create .venv, install, run the offline pipeline on a recorded real trace
#   make test   install what the tests need and run them
#   make bench  postprocess speed and memory on inflated real traces (docs/benchmarks.md)
#   make lint   ruff checks and formatting
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_TRACE := tests/fixtures/traces/tiny_vlm.sqlite.xz
# The cache of decompressed/exported traces stays inside the checkout.
export XDG_CACHE_HOME := $(CURDIR)/.cache

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stagemfu postprocess $(DEMO_TRACE) --within measured

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_postprocess.py --copies 700,3500 --out bench-out

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet 'ruff>=0.8'
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) .cache bench-out .pytest_cache .hypothesis
