# carousel: every set-up step lives here, so a fresh clone needs only Python 3.11+, pip and the
# package registry.  `make demo` and `make test` install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install native test lint demo bench clean

NATIVE := src/carousel/kernels/_native_avx2.so

install: $(STAMP) $(NATIVE)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# the native LSTM kernels: C++ compiled by g++ in seconds; where that fails, one line says so
# and the numba kernels serve
$(NATIVE): src/carousel/kernels/native.cpp $(STAMP)
	$(BIN)/python -m carousel.kernels.build --optional

native: $(STAMP)
	$(BIN)/python -m carousel.kernels.build

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: lint
	$(BIN)/python -m pytest -q

# a new run folder each time, so a second `make demo` never touches the first one's files
DEMO_RUN := runs/demo-$(shell date +%Y%m%d-%H%M%S)

demo: install
	$(BIN)/carousel train --preset char-small --out $(DEMO_RUN)
	@echo "--- sample (temperature 0.8, top-k 40) ---"
	$(BIN)/carousel sample $(DEMO_RUN) --prime "Rom." --temperature 0.8 --top-k 40 --length 500 --seed 1
	@echo "curves: $(DEMO_RUN)/curves.png"

bench: install
	$(BIN)/python bench/cells.py --loop --output BENCHMARKS.md
	$(BIN)/python bench/lm.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache src/carousel/kernels/_native_*.so
