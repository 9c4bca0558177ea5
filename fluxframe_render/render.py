"""ff-render's API: ``render(video, bundle, out, options) -> RenderResult``: wiring of the stages.

Two phases, each a pipeline run by pipeline.Runner, running at the same time (overlap.py):

1. Match (skipped when OUT's checkpoint is complete for these options), in a thread:
   decode -> describe -> search -> select (a policy) -> checkpoint.
   Batches are aligned to fixed multiples of the batch size; a resumed run re-enters the
   batch it stopped in with the state that batch started with, so it chooses exactly
   what an uninterrupted run would. Each commit hands its choices to the output phase
   (choice_feed.ChoiceFeed).
2. Output, from committed choices alone, as they come: (source frames) -> compose ->
   colour -> metrics -> sinks (MP4 + audio, frame JPEGs, samples, report), then results.json.

Everything is checked before OUT is touched: a refused render changes nothing on disk.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.assign import candidate_depth
from fluxframe_render.checkpoint import (
    CHECKPOINT_NAME,
    FRAME_INPUT_KEY,
    INTERNAL_KEYS,
    Checkpoint,
    Commit,
    Header,
    read_header,
    switch_matches,
    video_identity,
)
from fluxframe_render.choice_feed import ChoiceFeed, FeedGrids
from fluxframe_render.coherence import HoldParams, SmoothParams
from fluxframe_render.color_transfer import ColorParams, ColorTransfer
from fluxframe_render.compose import SOURCE_WIDTH, JpegWriter, MatchedImages
from fluxframe_render.lock import OutputLock
from fluxframe_render.match import (
    FRAME_INPUT_VERSION,
    Batch,
    Describe,
    FrameMatcher,
    Scenes,
    Search,
    VideoFrames,
    auto_match_batch,
)
from fluxframe_render.options import COHERENCE_CANDIDATES, RenderOptions, parse_grid
from fluxframe_render.output import ChoiceFrames, Colour, FullFrame, OutputFrame, Quality, source_size
from fluxframe_render.overlap import Overlap
from fluxframe_render.pipeline import Runner, RunTimings, Stage
from fluxframe_render.policies import GlobalAssign, Hold, PerFrame, Policy, Smooth
from fluxframe_render.report import ReportBuilder, TileFigures, tile_zoom_crop
from fluxframe_render.reuse import ReuseLedger
from fluxframe_render.scenes import CutParams
from fluxframe_render.select import HELD, Choice, SelectionPolicy, Selector
from fluxframe_render.sinks import FramesSink, Mp4Sink, ReportSink, SamplesSink
from fluxframe_render.tile_compose import TileComposer
from fluxframe_render.tile_match import TileIndex, TileMatcher, TileRules
from fluxframe_render.tile_record import TILE_GRIDS, TILE_LOG, TileGridLog, read_tile_grids
from fluxframe_render.tile_stages import TileCompose, TileFrames, TileSelect
from fluxframe_render.tiles import CellGeometry, describe_size
from fluxframe_render.video import FrameReader, VideoInfo, VideoWriter, output_schedule, probe_video
from shared import __version__
from shared.atomic import atomic_write_json
from shared.bundle import INDEX, Bundle, open_bundle
from shared.errors import InputError, OutputError, StateError, UsageError
from shared.features.base import normalize_weights
from shared.own_folders import is_inside
from shared.quality import FrameQuality, QualitySummary
from shared.search import Searcher, UsedSet, open_ivf

__all__ = ["RenderOptions", "RenderResult", "render"]

RESULTS_NAME = "results.json"
REPORT_NAME = "report.html"
FRAMES_DIR = "matched_frames"
SAMPLES_DIR = "comparison_samples"
RESULTS_FORMAT = 2
MOST_USED = 10  # images listed in results.json's totals

Warn = Callable[[str], None]


@dataclass
class RenderResult:
    out_dir: Path
    results_path: Path
    video_path: Path | None  # the MP4, None with skip_output
    frames: int
    fps: float
    distinct_images: int
    repeats: int  # times an image comes back after others were shown (staying on screen is not a repeat)
    held: int  # frames holding the previous image because of the threshold
    threshold_applied: int
    resumed_frames: int  # choices taken from the checkpoint
    matched_frames: int  # choices made in this run
    match_seconds: float
    output_seconds: float
    total_seconds: float
    match_ms_per_frame: dict[str, float]
    truncated: bool
    missing_images: int
    audio: str | None  # "copy", "aac" or None
    mean_score: float = 0.0
    warnings: list[str] = field(default_factory=list)
    assign: dict[str, Any] = field(default_factory=dict)  # results.json "assign": mode, mean scores
    # IVF rows of this run whose probe held too few unused images: widened_rows, exact_fallback_rows.
    search_stats: dict[str, int] = field(default_factory=dict)
    timings: dict[str, RunTimings] = field(default_factory=dict)  # "match", "output": per-stage seconds
    quality: QualitySummary | None = None  # the look against the source (None with skip_output)
    tiles: dict[str, Any] | None = None  # tile mode's totals (results.json "tiles")

    @property
    def output_fps(self) -> float:
        return self.frames / self.output_seconds if self.output_seconds > 0 else 0.0


def _ratio_text(w: float, h: float) -> str:
    a, b = round(w), round(h)
    g = math.gcd(a, b) or 1
    return f"{a // g}:{b // g}"


class _Render:
    """The inputs of one render, checked, and what the stages are built from."""

    def __init__(self, video: Path, bundle_path: Path, out: Path, options: RenderOptions, on_warning: Warn | None):
        self.video = video
        self.bundle_path = bundle_path
        self.out = out
        self.options = options
        self.on_warning = on_warning
        self.warnings: list[str] = []
        self.search_stats: dict[str, int] = {}
        self._tile_summary: dict[str, Any] | None = None
        # The video first: a wrong video path fails at once, before hashing a large bundle.
        self.info: VideoInfo = probe_video(video)
        self.bundle: Bundle = open_bundle(bundle_path, verify=options.verify)
        self._check_out()
        self._check_inputs()

    def warn(self, message: str) -> None:
        if message in self.warnings:
            return
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    # -- checks before anything is written -------------------------------------------------------

    def _check_out(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise OutputError(f"the output folder {out} is a file")
        for folder, what in ((self.bundle.path, "the bundle"), (self.bundle.pool_root, "the pool")):
            if is_inside(out, folder):
                raise UsageError(
                    f"the output folder {out} is inside {what} ({folder}): its frames would be indexed or mixed "
                    "with the bundle; choose a folder outside it"
                )

    def _check_inputs(self) -> None:
        spec, info, options = self.bundle.spec, self.info, self.options
        # Tiles are square crops whatever the bundle's aspect: only full frames are cropped to it.
        if options.tiles is None and abs(math.log((info.width / info.height) / spec.aspect)) > 0.01:
            self.warn(
                f"the video is {_ratio_text(info.width, info.height)} ({info.width}x{info.height}) but the bundle "
                f"was built for {_ratio_text(spec.aspect_w, spec.aspect_h)} images: frames are centre-cropped to "
                f"{_ratio_text(spec.aspect_w, spec.aspect_h)} for matching; matched images are cropped to the "
                "video's shape"
            )
        if options.fps_override is not None and options.fps_override > info.fps:
            self.warn(
                f"--fps-override {options.fps_override:g} is above the video's {info.fps:g} fps; frames are only "
                f"ever dropped, never repeated, so the output runs at {info.fps:g} fps"
            )
        blocks = [b.name for b in self.bundle.manifest.blocks]
        if blocks == ["neural"] and options.weights() != RenderOptions().weights():
            self.warn("the bundle's features are neural (one block): the edge/texture/colour weights do not apply")
        if options.nprobe is not None and self.bundle.manifest.index.kind != "ivf":
            self.warn("--nprobe only applies to IVF bundles; this bundle is searched exactly")
        if options.tiles is not None:
            self.bundle.tile_spec()  # a bundle without tile data: one line naming the fix, before OUT is touched
        _, expected = output_schedule(info, options.fps_override, options.max_seconds)
        pool = self.pool_size()
        if options.uses_limit == 1 and expected > pool:
            raise UsageError(
                f"--no-repeat needs one image per output frame: {expected} frames but only {pool} images "
                "available; use a larger pool, --fps-override, --max-uses 2 or more, or --demo-seconds"
            )
        if options.uses_limit > 1 and expected > pool * options.uses_limit:
            raise UsageError(
                f"--max-uses {options.uses_limit} allows {pool * options.uses_limit} frames from {pool} images, "
                f"the video has {expected}; raise --max-uses or use a larger pool"
            )

    def tile_grid(self) -> tuple[int, int]:
        assert self.options.tiles is not None
        return parse_grid(self.options.tiles, "--tiles")

    def tile_geometry(self) -> CellGeometry:
        """Where the cells of ``--tiles`` sit in the video's frames (the match and output phases share it)."""
        return CellGeometry.for_frame(self.info.width, self.info.height, self.tile_grid())

    def tile_summary(self) -> dict[str, Any]:
        """Tile mode's totals, from the finished match's grids (read once: results.json and the report
        both show them): a frame's choice names only its most used tile."""
        if self._tile_summary is None:
            grids = _tile_grids(self.out, self.tile_grid())
            changed = float(np.mean(grids[1:] != grids[:-1])) if len(grids) > 1 else 0.0
            ids, cells = np.unique(grids, return_counts=True)
            top = [int(i) for i in np.lexsort((ids, -cells))[:MOST_USED]]  # most cells first, ties by id
            paths = self.bundle.relative_paths([int(ids[i]) for i in top])
            self._tile_summary = {
                "grid": self.options.tiles,
                "grids_file": TILE_GRIDS,
                "frames": int(grids.shape[0]),
                "distinct_images": int(ids.size),
                "cell_switch_rate": round(changed, 6),
                "most_used": [
                    {"image_id": int(ids[i]), "path": path, "cells": int(cells[i])}
                    for i, path in zip(top, paths, strict=True)
                ],
            }
        return self._tile_summary

    def pool_root(self) -> Path:
        root = self.options.pool_root or self.bundle.pool_root
        if not root.is_dir():
            hint = "" if self.options.pool_root else "; pass --pool-root to where the pool images are now"
            raise InputError(f"pool folder {root} not found{hint}")
        return root

    # -- what the matches depend on ---------------------------------------------------------------

    def match_batch(self) -> int:
        return self.options.match_batch or auto_match_batch(self.bundle.manifest.dim)

    def search_k(self) -> int:
        # With no-repeat, frame j of a batch can find j of its candidates taken by the frames
        # before it in the same batch: k >= batch size keeps one free without a second search.
        depth = self.options.search_depth
        if self.options.assign == "global":
            return candidate_depth(depth)
        if self.options.coherence != "off":
            depth = max(depth, COHERENCE_CANDIDATES)
        return max(depth, self.match_batch()) if self.options.uses_limit > 0 else depth

    def search_enough(self) -> int | None:
        # Greedy reuse limits take one candidate per frame and search a frame again when its
        # list runs dry, so an IVF row is widened only below the search depth, not below k.
        if self.options.uses_limit > 0 and self.options.assign != "global":
            return self.options.search_depth
        return None

    def assign_window(self) -> int:
        """--assign global: frames per window (0 = the whole clip), rounded up to whole match batches."""
        window, batch = self.options.assign_window, self.match_batch()
        return -(-window // batch) * batch

    def nprobe(self) -> int | None:
        manifest = self.bundle.manifest
        if manifest.index.kind != "ivf":
            return None
        return self.options.nprobe or manifest.index.default_nprobe or None

    def match_options(self, seed: int | None) -> dict[str, Any]:
        """Everything the choices depend on (the checkpoint's header holds it): only what the mode uses."""
        o = self.options
        if o.tiles is not None:
            cols, rows = self.tile_grid()
            return {
                FRAME_INPUT_KEY: FRAME_INPUT_VERSION,
                "tiles": f"{cols}x{rows}",
                "tile_max_uses": o.tile_max_uses,
                "tile_distance": o.tile_distance,
                "tile_coherence": o.tile_coherence,
                "nprobe": self.nprobe(),
                "fps_override": o.fps_override,
                "max_seconds": o.max_seconds,
            }
        chosen: dict[str, Any] = {
            FRAME_INPUT_KEY: FRAME_INPUT_VERSION,
            "weights": normalize_weights(self.bundle.manifest.blocks, o.weights()),
            "search_depth": o.search_depth,
            "nprobe": self.nprobe(),
            "seed": seed,
            "threshold": o.threshold,
            "fps_override": o.fps_override,
            "max_seconds": o.max_seconds,
            "image_limit": o.image_limit,
            "coherence": o.coherence,
            "max_uses": o.uses_limit,
            "min_reuse_gap": o.min_reuse_gap,
            "match_batch": self.match_batch(),
            "k": self.search_k(),
        }
        if o.coherence == "hold":
            chosen.update(hold_margin=o.hold_margin)
        if o.coherence == "smooth":
            chosen.update(switch_cost=o.switch_cost)
        if o.assign == "global":
            chosen.update(assign="global", assign_window=self.assign_window())
        return chosen

    def pool_size(self) -> int:
        limit = self.options.image_limit
        return self.bundle.count if limit is None else min(limit, self.bundle.count)

    def searcher(self) -> Searcher:
        ivf = open_ivf(self.bundle.path / INDEX) if self.bundle.manifest.index.kind == "ivf" else None
        return Searcher(self.bundle.vectors, ivf=ivf, nprobe=self.nprobe(), limit=self.options.image_limit)

    def reader(self, start_index: int = 0) -> FrameReader:
        options = self.options
        return FrameReader(
            self.video,
            fps_override=options.fps_override,
            max_seconds=options.max_seconds,
            start_index=start_index,
            info=self.info,
        )


def _end(run: _Render, reader: FrameReader, choices: list[Choice]) -> dict[str, Any]:
    """The checkpoint's end record: how many frames, at what rate, and how the video ended."""
    if not choices:
        raise InputError(f"no frames could be read from {run.video}")
    return {
        "frames": len(choices),
        "fps": reader.fps,
        "expected": reader.expected,
        "decoded": reader.decoded,
        "truncated": reader.truncated,
        "errors": reader.errors,
    }


TILE_BATCH = 16  # frames whose cells are searched together (32x18 cells: 9,216 queries a call)


def _open_tile_log(run: _Render, done: int) -> tuple[TileGridLog, NDArray[np.int32]]:
    """OUT/tiles.log cut to the ``done`` committed choices, and the grids it holds."""
    cols, rows = run.tile_grid()
    log = TileGridLog.open(run.out / TILE_LOG, rows, cols)
    try:
        # Grids written after the last committed choice belong to no choice: cut them off.
        log.truncate(done)
        return log, np.array(log.read())
    except BaseException:
        log.close()
        raise


def _match_tiles(
    run: _Render, checkpoint: Checkpoint, history: list[Choice], log: TileGridLog, feed: ChoiceFeed, overlap: Overlap
) -> tuple[list[Choice], dict[str, Any], RunTimings]:
    """Phase 1 in tile mode: a grid of pool images per frame; grids go to OUT/tiles.log, then the choices."""
    options, bundle = run.options, run.bundle
    done = len(history)
    grid = run.tile_grid()
    geometry = run.tile_geometry()
    rules = TileRules(
        max_uses=options.tile_max_uses, min_distance=options.tile_distance, coherence_margin=options.tile_coherence
    )
    matcher = TileMatcher(TileIndex.for_bundle(bundle, nprobe=run.nprobe()), grid, rules)
    try:
        # The matcher's only state is the previous frame's grid.
        matcher.resume(np.array(log.read()[-1]) if done else None)
        reader = run.reader(done)
        select = TileSelect(matcher)
        bar = overlap.bar(reader.expected, "matching tiles", done)
        saved: list[NDArray[np.int32]] = []

        def save_grids(choices: list[Choice]) -> None:
            grids = select.take_grids(choices)
            log.append(grids)
            saved[:] = list(grids)

        def committed(choices: list[Choice]) -> None:
            bar.update(len(choices))
            feed.add(choices, saved)

        commit = Commit(checkpoint, options.checkpoint_batch, on_commit=committed, before_save=save_grids)
        source = TileFrames(reader, geometry, bundle.tile_spec(), TILE_BATCH)
        try:
            timings = overlap.run(Runner(source, [select, commit]))
        finally:
            bar.close()
        choices = history + commit.choices
        end = _end(run, reader, choices)
        checkpoint.finish(end)
        log.finish(run.out / TILE_GRIDS)
    finally:
        log.close()
    return choices, end, timings


def _match(
    run: _Render, checkpoint: Checkpoint, header: Header, history: list[Choice], feed: ChoiceFeed, overlap: Overlap
) -> tuple[list[Choice], dict[str, Any], RunTimings]:
    """Phase 1: choose an image for every frame not in the checkpoint yet."""
    options = run.options
    done = len(history)
    batch = run.match_batch()
    cut_params = CutParams()
    # Re-read enough frames before the first new one for its scene cut to be what it was.
    first = max(0, done - cut_params.history) // batch * batch
    reader = run.reader(first)
    matcher = FrameMatcher(
        run.bundle.extractor(),
        run.searcher(),
        header.match_options["weights"],
        run.search_k(),
        enough=run.search_enough(),
    )
    selection = SelectionPolicy(
        options.uses_limit == 1,
        options.search_depth,
        options.threshold,
        header.seed or 0,
        max_uses=options.uses_limit,
        min_gap=options.min_reuse_gap,
    )
    rules, pool = selection.rules, run.bundle.count
    policy: Policy
    if options.assign == "global":
        policy = GlobalAssign(Selector(selection, pool, history), matcher, run.assign_window(), batch, done)
    elif options.coherence == "hold":
        policy = Hold(HoldParams(options.hold_margin), rules, history, pool, matcher, done)
    elif options.coherence == "smooth":
        policy = Smooth(SmoothParams(options.switch_cost), rules, history, pool, matcher, done)
    else:
        policy = PerFrame(Selector(selection, pool, history), matcher, done)

    def excluded(item: Batch) -> UsedSet | None:
        # A batch a resumed run re-enters is searched with the reuse state it had then.
        start = item.frames[0].index
        if policy.used is None or start >= done:
            return policy.used
        committed = policy.committed_before(start, history)
        return ReuseLedger.replay(rules, (c.image_id for c in history[:committed]), pool).blocked

    stages: list[Stage[Any, Any]] = [Describe(matcher), Scenes(cut_params)]
    if options.assign != "global":
        stages.append(Search(matcher, excluded))
    bar = overlap.bar(reader.expected, "matching", done)
    units = options.assign == "global" or options.coherence == "smooth"

    def committed(choices: list[Choice]) -> None:
        bar.update(len(choices))
        feed.add(choices)

    commit = Commit(checkpoint, options.checkpoint_batch, units=units, on_commit=committed)
    runner = Runner(VideoFrames(reader, run.bundle.spec.prepared_size(), batch, first=first), [*stages, policy, commit])
    try:
        timings = overlap.run(runner)
    finally:
        bar.close()
        run.search_stats = dict(matcher.searcher.stats)
    choices = history + commit.choices
    end = _end(run, reader, choices)
    checkpoint.finish(end)
    return choices, end, timings


def _matching(
    run: _Render, checkpoint: Checkpoint, header: Header, history: list[Choice], overlap: Overlap
) -> tuple[ChoiceFeed, Callable[[], tuple[list[Choice], dict[str, Any], RunTimings]]]:
    """The feed of committed choices (the checkpoint's so far first) and the match phase that fills it."""
    if run.options.tiles is None:
        feed = ChoiceFeed(history)
        return feed, lambda: _match(run, checkpoint, header, history, feed, overlap)
    log, grids = _open_tile_log(run, len(history))
    feed = ChoiceFeed(history, list(grids))
    return feed, lambda: _match_tiles(run, checkpoint, history, log, feed, overlap)


def _remove_stale(folder: Path, prefix: str, keep: set[int] | None) -> None:
    """Delete pictures of an earlier run that this run does not write (all of them when keep is None)."""
    if not folder.is_dir():
        return
    for path in folder.glob(f"{prefix}*.jpg"):
        digits = path.stem[len(prefix) :]
        if digits.isdigit() and (keep is None or int(digits) not in keep):
            path.unlink(missing_ok=True)


@dataclass
class _Written:
    """What the output phase made."""

    mp4: Path
    audio: str | None
    missing: int
    timings: RunTimings
    quality: QualitySummary | None
    frame_quality: list[FrameQuality]


def _output(run: _Render, feed: ChoiceFeed, fps: float, root: Path, overlap: Overlap) -> _Written:
    """Phase 2: from the committed choices, the MP4, frame JPEGs, samples, look metrics and report.html.

    Runs beside the match phase when it is still going (the feed waits for its choices).
    """
    options, info, out = run.options, run.info, run.out
    frames_dir, samples_dir = out / FRAMES_DIR, out / SAMPLES_DIR
    total = feed.complete_count
    if total is None:
        total = output_schedule(info, options.fps_override, options.max_seconds)[1]  # what the video announces
    samples = {i * options.sample_interval for i in range(options.save_samples)} & set(range(total))
    for folder, wanted in ((frames_dir, options.save_frames), (samples_dir, bool(samples))):
        if wanted:
            try:
                folder.mkdir(exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create {folder}: {exc.strerror or exc}") from None
    mp4 = out / f"{run.video.stem}_matched.mp4"
    images = MatchedImages(run.bundle, root, (info.width, info.height))
    jpegs = JpegWriter()
    names = _Names(run.bundle)
    # Source frames are decoded again for the look metrics, colour transfer, samples and the report.
    geometry = run.tile_geometry() if options.tiles is not None else None
    needed_width = SOURCE_WIDTH
    if geometry is not None and options.tile_color_strength > 0:
        needed_width = describe_size(geometry, run.bundle.tile_spec())[0]  # tile colour describes the source's cells
    source = ChoiceFrames(feed, run.reader(), source_size(info.width, info.height, needed_width))
    colour = ColorParams(
        options.color_transfer,
        options.color_strength,
        options.color_chroma_strength,
        parse_grid(options.color_grid, "--color-grid"),
    )
    quality = Quality(with_photo=colour.mode != "off")
    compose: Stage[OutputFrame, OutputFrame]
    if geometry is not None:
        compose = TileCompose(
            TileComposer(run.bundle.atlas, geometry),
            FeedGrids(feed),
            run.bundle.tile_spec(),
            run.bundle.tile_descriptors,
            options.tile_color_strength,
        )
    else:
        compose = FullFrame(images, feed)
    stages: list[Stage[OutputFrame, OutputFrame]] = [compose]
    if colour.mode != "off":
        stages.append(Colour(ColorTransfer(colour)))
    stages.append(quality)
    writer = VideoWriter(
        mp4, info.width, info.height, fps, crf=options.crf, preset=options.preset, audio_from=run.video
    )
    stages.append(Mp4Sink(writer))
    if options.save_frames:
        stages.append(FramesSink(frames_dir, jpegs))
    if samples:
        stages.append(SamplesSink(samples_dir, samples, jpegs, names.name))
    report = ReportSink(
        ReportBuilder(f"{run.video.name} × {run.bundle.path.name}", total),
        names.name,
        tiles=options.tiles is not None,
    )
    if options.report:
        stages.append(report)
    bar = overlap.bar(total, "rendering", output=True)
    stages.append(_Progress(bar.update))
    try:
        timings = Runner(source, stages).run()
        jpegs.finish()
    finally:
        bar.close()
        jpegs.finish()
    for message in writer.audio_errors:
        run.warn(f"audio: {message}")
    if images.missing:
        first_id, reason = next(iter(sorted(images.missing.items())))
        run.warn(
            f"{len(images.missing)} matched image(s) could not be read and show as grey "
            f"(first: image {first_id}: {reason})"
        )
    choices = feed.choices()
    # Pictures of an earlier run that this one does not write (fewer frames, other samples, none).
    _remove_stale(frames_dir, "frame_", set(range(len(choices))) if options.save_frames else None)
    _remove_stale(samples_dir, "sample_", samples & set(range(len(choices))) if samples else None)
    summary = quality.tracker.summary() if quality.records else None
    if options.report:
        _write_report(run, report, choices, summary)
    else:
        (out / REPORT_NAME).unlink(missing_ok=True)  # an earlier run's report would describe other output
    return _Written(mp4, writer.audio_mode, len(images.missing), timings, summary, quality.records)


def _tile_grids(out: Path, grid: tuple[int, int]) -> NDArray[np.int32]:
    """The tile grids of a finished match: OUT/tiles.npy, or the log if the run stopped before writing it."""
    if (out / TILE_GRIDS).exists():
        return read_tile_grids(out / TILE_GRIDS)
    if (out / TILE_LOG).exists():
        log = TileGridLog.open(out / TILE_LOG, grid[1], grid[0])
        try:
            return np.array(log.read())
        finally:
            log.close()
    raise StateError(f"{out}: the tile grids of these matches are missing; rerun with --restart")


def _write_report(run: _Render, sink: ReportSink, choices: list[Choice], quality: QualitySummary | None) -> None:
    counts = _counts(choices)
    summary: dict[str, Any] = {
        "frames": counts["frames"],
        "distinct images": counts["distinct_images"],
        "mean score": counts["mean_score"],
        "switch rate": counts["switch_rate"],
    }
    if quality is not None:
        summary.update(
            {
                "mean SSIM": round(quality.mean_ssim, 4),
                "mean ΔE": round(quality.mean_delta_e, 2),
                "flicker (× source)": None if quality.flicker is None else round(quality.flicker, 2),
            }
        )
    figures = None
    zoom = None
    if run.options.tiles is not None:
        tiles = run.tile_summary()
        cols, rows = run.tile_grid()
        figures = TileFigures(
            grid=tiles["grid"],
            cells=cols * rows,
            cell_switch_rate=tiles["cell_switch_rate"],
            distinct_tiles=tiles["distinct_images"],
            most_used=[(used["path"], used["cells"]) for used in tiles["most_used"]],
        )
        # A frame's "image" is only its most used tile: the mosaic's own figures replace those.
        del summary["distinct images"], summary["switch rate"]
        summary.update(
            {
                "tile grid": tiles["grid"],
                "distinct tile images": tiles["distinct_images"],
                "cells switching": tiles["cell_switch_rate"],
            }
        )
        if sink.last is not None and sink.last.image is not None:
            zoom = tile_zoom_crop(sink.last.image, (cols, rows))
    bundle = {"id": run.bundle.bundle_id[:16], "method": run.bundle.spec.method, "images": run.bundle.count}
    options = {k: v for k, v in run.options.to_dict().items() if k not in ("progress", "timings")}
    sink.builder.write(run.out / REPORT_NAME, summary, options, bundle, sink.builder.most_used(), zoom, figures)


class _Progress(Stage[OutputFrame, OutputFrame]):
    name = "progress"

    def __init__(self, update: Callable[[int], object]) -> None:
        self.update = update

    def process(self, item: OutputFrame) -> tuple[OutputFrame]:
        self.update(1)
        return (item,)


class _Names:
    """Pool-relative names of image ids, looked up once each."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._names: dict[int, str] = {}

    def name(self, image_id: int) -> str:
        if image_id not in self._names:
            self._names[image_id] = self.bundle.relative_paths([image_id])[0]
        return self._names[image_id]


def _counts(choices: list[Choice]) -> dict[str, Any]:
    seen: set[int] = set()
    repeats = 0
    previous: int | None = None
    for choice in choices:
        # A repeat is an image coming back: held frames and an image staying on screen are not.
        if choice.fallback != HELD and choice.image_id != previous and choice.image_id in seen:
            repeats += 1
        seen.add(choice.image_id)
        previous = choice.image_id
    scores = [c.score for c in choices]
    switches = sum(1 for a, b in itertools.pairwise(choices) if a.image_id != b.image_id)
    return {
        "frames": len(choices),
        "distinct_images": len(seen),
        "repeats": repeats,
        "held": sum(c.fallback == HELD for c in choices),
        "threshold_applied": sum(c.threshold_applied for c in choices),
        "mean_score": round(float(sum(scores) / len(scores)), 6) if scores else 0.0,
        "min_score": round(float(min(scores)), 6) if scores else 0.0,
        "switches": switches,
        "switch_rate": round(switches / max(1, len(choices) - 1), 6),
    }


def _assign_summary(run: _Render, choices: list[Choice]) -> dict[str, Any]:
    """How no-repeat shared the images out: mean score, and for --assign global the greedy comparison.

    Means are over the frames that show their own match (held frames excluded).
    """
    options = run.options
    if options.uses_limit != 1:
        return {}
    shown = [c for c in choices if c.fallback != HELD]
    mean = float(sum(c.score for c in shown) / len(shown)) if shown else 0.0
    if options.assign != "global":
        return {"mode": "greedy", "mean_score": mean, "frames": len(shown)}
    greedy_scores = [c.greedy_score for c in shown if c.greedy_score is not None]
    greedy = float(sum(greedy_scores) / len(greedy_scores)) if greedy_scores else 0.0
    return {
        "mode": "global",
        "window": run.assign_window(),
        "candidates_per_frame": run.search_k(),
        "frames": len(shown),
        "mean_score": mean,
        "greedy_mean_score": greedy,
        "mean_score_gain": mean - greedy,
    }


def _results(
    run: _Render,
    header: Header,
    choices: list[Choice],
    end: dict[str, Any],
    output: dict[str, Any],
    timings: dict[str, RunTimings],
    written: _Written | None,
) -> dict[str, Any]:
    paths = run.bundle.relative_paths([c.image_id for c in choices])
    info = run.info
    run_only = ("progress", "restart", "restart_if_changed", "timings")
    options = {k: v for k, v in run.options.to_dict().items() if k not in run_only}
    uses = Counter(c.image_id for i, c in enumerate(choices) if i == 0 or choices[i - 1].image_id != c.image_id)
    name_of = dict(zip((c.image_id for c in choices), paths, strict=True))
    most_used = [{"image_id": i, "path": name_of[i], "uses": n} for i, n in uses.most_common(MOST_USED)]
    return {
        "format": "fluxframe-render-results",
        "format_version": RESULTS_FORMAT,
        "tool_version": __version__,
        "bundle_id": header.bundle_id,
        "bundle": str(run.bundle.path),
        "pool_root": str(run.options.pool_root or run.bundle.pool_root),
        "method": run.bundle.spec.method,
        "video": {
            "path": str(run.video),
            "width": info.width,
            "height": info.height,
            "fps": info.fps,
            "frame_count": info.frame_count,
            "duration": info.duration,
            "has_audio": info.has_audio,
            "audio_codec": info.audio_codec,
        },
        "options": options,
        "match_options": {k: v for k, v in header.match_options.items() if k not in INTERNAL_KEYS},
        "assign": _assign_summary(run, choices),
        "seed": header.seed,
        "output": output,
        "counts": {
            **_counts(choices),
            "source_frames_decoded": end.get("decoded"),
            "expected_frames": end.get("expected"),
            "truncated": bool(end.get("truncated")),
        },
        "most_used": most_used,
        "tiles": run.tile_summary() if run.options.tiles is not None else None,
        "quality": None if written is None or written.quality is None else _rounded(written.quality.to_dict()),
        "timings": {phase: t.to_dict() for phase, t in timings.items()},
        "frames": [
            {
                **c.to_dict(),
                "cut": c.cut,
                "time": round(c.time, 4),
                "score": round(c.score, 6),
                "path": p,
                **(_frame_look(written.frame_quality[i]) if written and i < len(written.frame_quality) else {}),
            }
            for i, (c, p) in enumerate(zip(choices, paths, strict=True))
        ],
    }


def _rounded(data: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in data.items()}


def _frame_look(record: FrameQuality) -> dict[str, Any]:
    look = {"ssim": record.ssim, "delta_e": record.delta_e, "delta_e_fine": record.delta_e_fine}
    if record.photo_ssim is not None:
        look["photo_ssim"] = record.photo_ssim
    return _rounded(look)


def _seed(options: RenderOptions, out: Path) -> int | None:
    """The seed of the random pick: the one given, else the one OUT's checkpoint drew, else a new draw.

    Only --coherence off without reuse limits draws; the other modes never use a seed, so none is
    recorded for them (a --seed given there changes nothing) and their results do not vary from run to run.
    """
    if options.coherence != "off" or options.uses_limit > 0:
        return None
    if options.seed is not None:
        return options.seed
    existing = read_header(out / CHECKPOINT_NAME)
    if existing is not None and existing.seed is not None:
        return existing.seed
    return secrets.randbits(32)


def render(
    video: Path, bundle: Path, out: Path, options: RenderOptions, *, on_warning: Warn | None = None
) -> RenderResult:
    """Render ``video`` as a collage of ``bundle``'s images into the folder ``out``.

    Resumes from ``out``'s checkpoint when it was made with the same match options; with
    other match options the new ones win (the earlier matches are kept in OUT/.matches/).
    Raises StateError when another render holds ``out``.
    """
    started = time.perf_counter()
    video, bundle, out = Path(video), Path(bundle), Path(out)
    run = _Render(video, bundle, out, options, on_warning)
    # Before a long match, not after it: output needs the pool where it is now.
    root = run.pool_root() if not options.skip_output else None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    with OutputLock(out):
        seed = _seed(options, out)
        header = Header(run.bundle.bundle_id, video_identity(video, run.info), run.match_options(seed), seed)
        if not options.restart:
            switched = switch_matches(out, header, companions=(TILE_LOG, TILE_GRIDS))
            if switched is not None:
                run.warn(switched)
        checkpoint, progress = Checkpoint.open(out / CHECKPOINT_NAME, header, restart=options.restart)
        results_path = out / RESULTS_NAME
        resumed = len(progress.choices)
        timings: dict[str, RunTimings] = {}
        match_started = time.perf_counter()
        # Until this run writes it, an earlier run's results.json would describe other output.
        results_path.unlink(missing_ok=True)
        overlap = Overlap(options.progress, overlapped=root is not None and progress.end is None)
        written: _Written | None = None
        match_seconds = output_seconds = 0.0
        try:
            if progress.end is None:
                feed, match = _matching(run, checkpoint, progress.header, progress.choices, overlap)

                def timed_match() -> tuple[list[Choice], dict[str, Any], RunTimings]:
                    nonlocal match_seconds
                    try:
                        return match()
                    finally:
                        match_seconds = time.perf_counter() - match_started

                if root is None:
                    choices, end, timings["match"] = timed_match()
                else:
                    fps = output_schedule(run.info, options.fps_override, options.max_seconds)[0]
                    (choices, end, timings["match"]), written = overlap.together(
                        timed_match, lambda: _output(run, feed, fps, root, overlap), feed
                    )
            else:
                choices, end = progress.choices, progress.end
                if root is not None:
                    grids = list(_tile_grids(out, run.tile_grid())) if options.tiles is not None else None
                    written = _output(run, ChoiceFeed.complete(choices, grids), float(end["fps"]), root, overlap)
        finally:
            checkpoint.close()
        if written is not None:
            output_seconds = time.perf_counter() - match_started  # output starts with matching, beside it
        if end.get("truncated"):
            first_error = f" ({end['errors'][0]})" if end.get("errors") else ""
            run.warn(
                f"the video ends early: {end['frames']} of the {end['expected']} frames it announces could be "
                f"read{first_error}; rendered what decodes"
            )
        output: dict[str, Any] = {"fps": end["fps"], "width": run.info.width, "height": run.info.height}
        if written is not None:
            timings["output"] = written.timings
            output.update(
                video=written.mp4.name,
                audio=written.audio,
                frames_dir=FRAMES_DIR if options.save_frames else None,
                samples_dir=SAMPLES_DIR if options.save_samples else None,
                report=REPORT_NAME if options.report else None,
                missing_images=written.missing,
            )
        else:
            output.update(video=None, audio=None, frames_dir=None, samples_dir=None, report=None, missing_images=0)
        results = _results(run, progress.header, choices, end, output, timings, written)
        # Wall seconds: the phases overlap, so their own seconds do not add up to the render's.
        results["elapsed"] = {
            "match_s": round(match_seconds, 4),
            "render_s": round(max(match_seconds, output_seconds), 4),
            "phases_overlapped": overlap.overlapped,
        }
        atomic_write_json(results_path, results)
    counts = _counts(choices)
    match_timings = timings.get("match")
    per_frame: dict[str, float] = {}
    if match_timings is not None:
        made = max(1, len(choices) - resumed)
        per_frame = {name: 1000 * t.busy / made for name, t in match_timings.stages.items()}
        per_frame["total"] = 1000 * match_seconds / made
    return RenderResult(
        out_dir=out,
        results_path=results_path,
        video_path=written.mp4 if written else None,
        frames=counts["frames"],
        fps=float(end["fps"]),
        distinct_images=counts["distinct_images"],
        repeats=counts["repeats"],
        held=counts["held"],
        threshold_applied=counts["threshold_applied"],
        resumed_frames=resumed,
        matched_frames=counts["frames"] - resumed,
        match_seconds=match_seconds,
        output_seconds=output_seconds,
        total_seconds=time.perf_counter() - started,
        match_ms_per_frame=per_frame,
        truncated=bool(end.get("truncated")),
        missing_images=written.missing if written else 0,
        audio=written.audio if written else None,
        quality=written.quality if written else None,
        tiles=results["tiles"],
        mean_score=counts["mean_score"],
        warnings=run.warnings,
        assign=_assign_summary(run, choices),
        search_stats=run.search_stats,
        timings=timings,
    )
