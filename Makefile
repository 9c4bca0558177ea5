# FluxFrame: every target bootstraps .venv itself, so `make test` / `make demo` work on a fresh clone.
# Job targets (index, render, renders) are documented in README.md, "Batch jobs".

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
EXTRAS ?= dev,export,dask

.PHONY: install test lint demo bench bench-large clean help

help:
	@echo "make install | test | lint | demo | bench | bench-large"
	@echo "make index POOL=dir BUNDLE=dir [METHOD=canny INDEX_ARGS=...]"
	@echo "make render VIDEO=file BUNDLE=dir OUT=dir [RENDER_ARGS=...]"
	@echo "make renders VIDEOS=dir BUNDLE=dir OUTROOT=dir [RENDER_ARGS=...] [-j N]"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

lint: $(STAMP)
	$(BIN)/ruff check shared fluxframe_index fluxframe_render tests
	$(BIN)/ruff format --check shared fluxframe_index fluxframe_render tests
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/python -m tests.demo demo-out

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run --out bench-out --readme README.md

bench-large: $(STAMP)
	$(BIN)/python -m tests.bench.run --out bench-out --readme README.md --large

clean:
	rm -rf demo-out bench-out .bench
