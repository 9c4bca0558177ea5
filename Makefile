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

# ---------------------------------------------------------------------------
# Batch jobs: one make call per job line (see README "Batch jobs").
#   make index   POOL=dir BUNDLE=dir [METHOD=canny] [INDEX_ARGS="--jobs 8 --index ivf"]
#   make render  VIDEO=file BUNDLE=dir OUT=dir [RENDER_ARGS="--no-repeat"]
#   make renders VIDEOS=dir BUNDLE=dir OUTROOT=dir [RENDER_ARGS=...]   (make -k -j N renders)
# A video's output is redone only when the video, the bundle's manifest or RENDER_ARGS changed.
# File names with spaces are not supported by these make targets (call ff-render directly).
METHOD ?= canny
INDEX_ARGS ?=
RENDER_ARGS ?=
VIDEO_EXTS := mp4 mov mkv avi webm m4v mpg mpeg
FF_INDEX := $(BIN)/ff-index
FF_RENDER := $(BIN)/ff-render

.PHONY: index render renders FORCE

index: $(STAMP)
	@test -n "$(POOL)" -a -n "$(BUNDLE)" || { echo "usage: make index POOL=dir BUNDLE=dir [METHOD=...] [INDEX_ARGS=...]" >&2; exit 2; }
	$(FF_INDEX) build "$(POOL)" "$(BUNDLE)" --method $(METHOD) $(INDEX_ARGS)

render: $(STAMP)
	@test -n "$(VIDEO)" -a -n "$(BUNDLE)" -a -n "$(OUT)" || { echo "usage: make render VIDEO=file BUNDLE=dir OUT=dir [RENDER_ARGS=...]" >&2; exit 2; }
	$(FF_RENDER) "$(VIDEO)" "$(BUNDLE)" "$(OUT)" --restart-if-changed $(RENDER_ARGS)

ifdef VIDEOS
VIDEO_FILES := $(sort $(foreach e,$(VIDEO_EXTS),$(wildcard $(VIDEOS)/*.$(e))))
RENDER_STAMPS := $(foreach v,$(VIDEO_FILES),$(OUTROOT)/$(basename $(notdir $(v)))/.rendered)

# The options file is rewritten only when RENDER_ARGS change, so its date is what make compares.
$(OUTROOT)/%/.options: FORCE
	@mkdir -p "$(@D)"
	@printf '%s\n' '$(RENDER_ARGS)' | cmp -s - "$@" || printf '%s\n' '$(RENDER_ARGS)' > "$@"

define RENDER_RULE
$(OUTROOT)/$(basename $(notdir $(1)))/.rendered: $(1) $(BUNDLE)/manifest.json $(OUTROOT)/$(basename $(notdir $(1)))/.options | $(STAMP)
	@echo "render $(1) -> $$(@D)"
	@$(FF_RENDER) "$(1)" "$(BUNDLE)" "$$(@D)" --restart-if-changed --quiet $(RENDER_ARGS) \
	  || { echo "render FAILED: $(1) (rerun to resume from its checkpoint)" >&2; exit 1; }
	@touch "$$@"
endef
$(foreach v,$(VIDEO_FILES),$(eval $(call RENDER_RULE,$(v))))
endif

renders: $(STAMP)
	@test -n "$(VIDEOS)" -a -n "$(BUNDLE)" -a -n "$(OUTROOT)" || { echo "usage: make renders VIDEOS=dir BUNDLE=dir OUTROOT=dir [RENDER_ARGS=...]" >&2; exit 2; }
	@test -f "$(BUNDLE)/manifest.json" || { echo "$(BUNDLE): not a bundle (run make index first)" >&2; exit 2; }
	@$(MAKE) --no-print-directory render-all VIDEOS="$(VIDEOS)" BUNDLE="$(BUNDLE)" OUTROOT="$(OUTROOT)" RENDER_ARGS='$(RENDER_ARGS)'

.PHONY: render-all
render-all: $(RENDER_STAMPS)
	@echo "renders: $(words $(RENDER_STAMPS)) videos up to date in $(OUTROOT)"

FORCE:
