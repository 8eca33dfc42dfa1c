# stagemfu: two commands do everything on a fresh Linux machine with Python >= 3.10.
#   make demo   create .venv, install, report per-stage MFU of the embedded real trace, write report.html
#   make test   install what the tests need (model extra, headless Chromium) and run them
#   make bench  speed and memory: postprocess on inflated real traces (nsys; torch.profiler against
#               HolisticTraceAnalysis), analyzer, NVTX API cost, start-up
#   make sweep  hostile inputs through every command (about 10 minutes; counts in sweep-out/summary.json)
#   make lint   ruff checks and formatting
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# HolisticTraceAnalysis, which bench/bench_kineto.py compares with, in an environment of its own
# (it is no dependency of stagemfu).
BENCH_VENV := .benchvenv
BENCH_STAMP := $(BENCH_VENV)/.installed
# The CPU build of torch: on machines that keep it on local disk pip takes it from there;
# elsewhere this pin downloads torch 2.13.0 from PyPI.
TORCH  ?= torch==2.13.0
# The cache of decompressed/exported traces stays inside the checkout.
export XDG_CACHE_HOME := $(CURDIR)/.cache

.PHONY: demo test browser bench sweep lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet '$(TORCH)' -e '.[test,model]'
	touch $(TEST_STAMP)

$(BENCH_STAMP):
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet HolisticTraceAnalysis
	touch $(BENCH_STAMP)

# The HTML report is tested in a real headless Chromium (Debian's package; playwright drives it).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium for the browser test"; \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	    $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq chromium >/dev/null; }

demo: $(STAMP)
	$(BIN)/stagemfu report --html report.html
	@echo "wrote report.html"

test: $(TEST_STAMP) browser
	$(BIN)/python -m pytest -q

bench: $(TEST_STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/bench_postprocess.py --copies 14,140,700 --ranks 4 --rank-copies 140 --out bench-out --workdir bench-out/traces --keep
	$(BIN)/python bench/bench_loading.py bench-out/traces/inflated-x700.sqlite --out bench-out/loading.json
	$(BIN)/python bench/bench_analyze.py --out bench-out/analyze
	$(BIN)/python bench/bench_what_if.py --out bench-out/what_if.json
	$(BIN)/python bench/bench_nvtx_api.py
	$(BIN)/python bench/bench_deep_nesting.py --depths 2000,10000 --out bench-out
	$(BIN)/python bench/bench_startup.py --out bench-out/startup.json
	$(BIN)/python bench/bench_op_flops.py --out bench-out/op_flops.json
	$(BIN)/python bench/bench_kineto.py --copies 20,100,340 --hta $(BENCH_VENV)/bin/python --out bench-out

sweep: $(TEST_STAMP)
	$(BIN)/python tests/sweep_cli.py sweep-out

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet 'ruff>=0.8'
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

clean:
	rm -rf $(VENV) $(BENCH_VENV) .cache bench-out sweep-out .pytest_cache .hypothesis report.html
