# The two commands of the README do all set-up on a fresh machine:
#   make demo   train QLAE on procedural shapes3d, evaluate, write runs/demo/report.html
#   make test   the test suite
# Both create .venv, install torch (torch==2.13.0, the CPU build, when the venv has none),
# build the package with its C++ kernels and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: install test test-heavy demo bench lint clean ext

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e ".[test,triton]"
	touch $(STAMP)

install: $(STAMP)

test: ext
	$(PY) -m pytest -q -m "not heavy" tests

# Multi-process (DDP, concurrent runs), fault-injection and long end-to-end checks; CI runs them as a separate step.
# pytest's exit 5 (no test carries the marker) is not a failure.
test-heavy: ext
	$(PY) -m pytest -q -m heavy tests; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

demo: ext
	$(PY) -m latentquant.cli train --config configs/demo.yaml --out runs/demo

# Benchmarks (DESIGN §9, benchmarks/conftest.py). Each run is saved as benchmarks/results/<machine>/NNNN_<commit>.json
# (pytest-benchmark storage) and compared with the last run saved there. Targets print as MET / MISSED and the
# run exits 0 unless asked:
#   make bench BENCH_FAIL=1    a missed target, or a median more than BENCH_THRESHOLD slower than the last
#                              saved run, fails the run
#   make bench BENCH_QUICK=1   small sizes, to check that every suite runs (a minute or two; saved under
#                              benchmarks/results/quick/, never compared with full runs)
BENCH_FAIL ?= 0
BENCH_QUICK ?= 0
BENCH_THRESHOLD ?= median:25%
BENCH_STORAGE = benchmarks/results$(if $(filter 1,$(BENCH_QUICK)),/quick)

bench: ext
	$(PIP) install -q --no-build-isolation -e ".[bench]"
	LATENTQUANT_BENCH_QUICK=$(BENCH_QUICK) LATENTQUANT_BENCH_FAIL=$(BENCH_FAIL) \
	$(PY) -m pytest -q benchmarks -p no:cacheprovider --benchmark-storage=file://./$(BENCH_STORAGE) \
	  --benchmark-save=$$(git describe --always --dirty 2>/dev/null || echo nogit) --benchmark-compare \
	  $(if $(filter 1,$(BENCH_FAIL)),--benchmark-compare-fail=$(BENCH_THRESHOLD))

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks triton_kernels
	$(PY) -m ruff format --check src tests benchmarks triton_kernels

clean:
	rm -rf build $(VENV) src/latentquant/*.so

# (Re)build latentquant._C in place; incremental (ninja), so a no-op when csrc/ is unchanged.
# Serialized with flock: several people may build in one tree at once.
ext: $(STAMP)
	flock /tmp/latentquant-build.lock $(PY) setup.py -q build_ext --inplace
