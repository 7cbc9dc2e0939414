# carousel: every set-up step lives here, so a fresh clone needs only Python 3.11+, pip and the
# package registry.  `make demo` and `make test` install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

test: lint
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/carousel demo

bench: install
	$(BIN)/python bench/cells.py --loop --output BENCHMARKS.md

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
