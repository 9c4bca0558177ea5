# FluxFrame: every target bootstraps .venv itself, so `make test` / `make demo` work on a fresh clone.
# Job targets (index, render, renders) are documented in docs/batch-and-cluster.md.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
EXTRAS ?= dev,export,dask

.PHONY: install test test-fast lint demo bench bench-large quality clean help

help:
	@echo "make install | test | test-fast | lint | demo | bench | bench-large | quality"
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

# Everything but the tests marked slow (kill-and-resume, Dask clusters, neural export, make batches).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check shared fluxframe_index fluxframe_render tests
	$(BIN)/ruff format --check shared fluxframe_index fluxframe_render tests
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/python -m tests.demo demo-out

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run --out bench-out --readme docs/performance.md

bench-large: $(STAMP)
	$(BIN)/python -m tests.bench.run --out bench-out --readme docs/performance.md --large

# The look on real footage in no pool, every coherence x colour mode and tiles: docs/look.md + docs/look-strip.png.
quality: $(STAMP)
	$(BIN)/python -m tests.bench.look_report --out bench-out/look --doc docs/look.md --strip docs/look-strip.png

clean:
	rm -rf demo-out bench-out .bench

# ---------------------------------------------------------------------------
# Batch jobs: one make call per job line (see docs/batch-and-cluster.md).
#   make index   POOL=dir BUNDLE=dir [METHOD=canny] [INDEX_ARGS="--jobs 8 --index ivf"]
#   make render  VIDEO=file BUNDLE=dir OUT=dir [RENDER_ARGS="--no-repeat"]
#   make renders VIDEOS=dir BUNDLE=dir OUTROOT=dir [RENDER_ARGS=...]   (make -k -j N renders)
# renders: one folder OUTROOT/<stem>/ per video directly in VIDEOS; a video's output is redone only
# when the video, the bundle's manifest or RENDER_ARGS changed (make compares modification times).
# Everything `renders` decides is decided while this file is read, so `make -q` / `make -n` are exact.
# File names with spaces are not supported by these make targets (call ff-render directly).
METHOD ?= canny
INDEX_ARGS ?=
RENDER_ARGS ?=
# Both cases spelled out: $(wildcard) is case-sensitive and cameras write .MP4 and .MOV.
VIDEO_EXTS := mp4 mov mkv avi webm m4v mpg mpeg MP4 MOV MKV AVI WEBM M4V MPG MPEG
FF_INDEX := $(BIN)/ff-index
FF_RENDER := $(BIN)/ff-render

.PHONY: index render renders renders-refused FORCE

index: $(STAMP)
	@test -n "$(POOL)" -a -n "$(BUNDLE)" || { echo "usage: make index POOL=dir BUNDLE=dir [METHOD=...] [INDEX_ARGS=...]" >&2; exit 2; }
	$(FF_INDEX) build "$(POOL)" "$(BUNDLE)" --method $(METHOD) $(INDEX_ARGS)

render: $(STAMP)
	@test -n "$(VIDEO)" -a -n "$(BUNDLE)" -a -n "$(OUT)" || { echo "usage: make render VIDEO=file BUNDLE=dir OUT=dir [RENDER_ARGS=...]" >&2; exit 2; }
	$(FF_RENDER) "$(VIDEO)" "$(BUNDLE)" "$(OUT)" --restart-if-changed $(RENDER_ARGS)

# Non-empty when the two strings are equal (make has no string equality; ":" keeps "" == "" true).
same = $(and $(findstring :$(1):,:$(2):),$(findstring :$(2):,:$(1):))
# For a printf '...' argument.
squote = $(subst ','\'',$(1))
RENDER_OPTIONS := $(strip $(RENDER_ARGS))
RENDERS_REFUSED :=
RENDER_STAMPS :=
VIDEOS_DIR := $(patsubst %/,%,$(VIDEOS))

ifeq ($(and $(VIDEOS),$(BUNDLE),$(OUTROOT)),)
RENDERS_REFUSED := 'usage: make renders VIDEOS=dir BUNDLE=dir OUTROOT=dir [RENDER_ARGS=...]'
else ifeq ($(wildcard $(VIDEOS_DIR)/.),)
RENDERS_REFUSED := '$(call squote,$(VIDEOS)): no such folder'
else ifeq ($(wildcard $(BUNDLE)/manifest.json),)
RENDERS_REFUSED := '$(call squote,$(BUNDLE)): not a bundle (no manifest.json); run make index first'
else
# A name with a space comes out of $(wildcard) as several words: keep only the words that are videos.
VIDEO_FILES := $(sort $(wildcard $(filter $(VIDEOS_DIR)/%,$(filter $(addprefix %.,$(VIDEO_EXTS)),\
  $(foreach e,$(VIDEO_EXTS),$(wildcard $(VIDEOS_DIR)/*.$(e)))))))
SPACED_VIDEOS := $(strip $(shell find '$(call squote,$(VIDEOS_DIR))' -maxdepth 1 -type f \
  \( -false $(foreach e,$(VIDEO_EXTS),-o -name '* *.$(e)') \) -printf '"%f" ' 2>/dev/null))
VIDEO_STEMS := $(basename $(notdir $(VIDEO_FILES)))
# Two videos with one stem (a.mp4, a.mov) would share OUTROOT/a/: neither is rendered.
SHARED_STEMS := $(strip $(foreach s,$(sort $(VIDEO_STEMS)),$(if $(word 2,$(filter $(s),$(VIDEO_STEMS))),$(s))))
VIDEO_FILES := $(foreach v,$(VIDEO_FILES),$(if $(filter $(basename $(notdir $(v))),$(SHARED_STEMS)),,$(v)))
RENDERS_REFUSED := $(strip \
  $(if $(SPACED_VIDEOS),'renders: names with spaces are not supported (rename them or run ff-render): $(call squote,$(SPACED_VIDEOS))') \
  $(if $(SHARED_STEMS),'renders: videos that would share an output folder (rename one): $(SHARED_STEMS)'))

# $(1) video, $(2) its output folder. The .options stamp gets FORCE, and so a new date, only when
# RENDER_ARGS differ from what it holds: an unchanged stamp keeps its date and the render is skipped.
define RENDER_RULE
$(2)/.options: $(if $(call same,$(strip $(file <$(2)/.options)),$(RENDER_OPTIONS)),,FORCE)
	@mkdir -p "$(2)"
	@printf '%s\n' '$(call squote,$(RENDER_OPTIONS))' > "$$@.tmp" && mv -f "$$@.tmp" "$$@"

$(2)/.rendered: $(1) $(BUNDLE)/manifest.json $(2)/.options | $(STAMP)
	@echo "render $(1) -> $(2)"
	@$(FF_RENDER) "$(1)" "$(BUNDLE)" "$(2)" --restart-if-changed --quiet $(RENDER_ARGS) \
	  || { rc=$$$$?; echo "render FAILED: $(1) (exit $$$$rc; a rerun resumes from its checkpoint)" >&2; exit $$$$rc; }
	@touch "$$@"
endef
$(foreach v,$(VIDEO_FILES),$(eval $(call RENDER_RULE,$(v),$(OUTROOT)/$(basename $(notdir $(v))))))
RENDER_STAMPS := $(foreach v,$(VIDEO_FILES),$(OUTROOT)/$(basename $(notdir $(v)))/.rendered)
endif

# No recipe of its own, so `make -q renders` exits 0 exactly when every video is up to date.
# renders-refused comes last: without -k the videos that can be rendered are rendered first.
renders: $(STAMP) $(RENDER_STAMPS) $(if $(RENDERS_REFUSED),renders-refused)

renders-refused:
	@printf '%s\n' $(RENDERS_REFUSED) >&2; exit 2

FORCE:
