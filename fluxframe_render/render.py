"""ff-render's API: ``render(video, bundle, out, options) -> RenderResult``.

Two phases, each restartable:

1. Match: frames are decoded, described and searched in batches aligned to fixed
   multiples of the batch size, and each frame's choice is appended to the
   checkpoint. A resumed run re-searches the batch it stopped in with the used
   set that batch started with, so every frame sees exactly what it would have seen
   in an uninterrupted run: the results are identical, not merely similar.
2. Output: from the checkpoint alone (the video is decoded again only for
   comparison samples): matched images at the video's size -> H.264 MP4 with the
   source audio, frame JPEGs, samples, results.json.

Warnings (aspect or frame-rate mismatch, a truncated video, unreadable pool images)
are returned in the result and also passed to ``on_warning`` as they happen.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.assign import ASSIGN_MODES, Candidates, assign_window, candidate_depth
from fluxframe_render.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    CheckpointMismatch,
    Header,
    Progress,
    video_identity,
)
from fluxframe_render.compose import JpegWriter, MatchedImages, side_by_side
from fluxframe_render.lock import OutputLock
from fluxframe_render.match import Batch, FrameMatcher, auto_match_batch, prepared_batches
from fluxframe_render.select import HELD, Choice, FrameRef, SelectionPolicy, Selector
from fluxframe_render.video import X264_PRESETS, FrameReader, SourceFrame, VideoInfo, VideoWriter, probe_video
from shared import __version__
from shared.atomic import atomic_write_json
from shared.bundle import INDEX, Bundle, open_bundle
from shared.cli_support import progress_bar
from shared.errors import InputError, OutputError, UsageError
from shared.features.base import normalize_weights
from shared.search import Searcher, UsedSet, open_ivf

RESULTS_NAME = "results.json"
FRAMES_DIR = "matched_frames"
SAMPLES_DIR = "comparison_samples"
RESULTS_FORMAT = 1
DEFAULT_WEIGHTS = (0.33, 0.33, 0.34)

Warn = Callable[[str], None]


@dataclass(frozen=True)
class RenderOptions:
    """Every ff-render option. Match options decide the choices; the rest only the output."""

    # match options (a change voids the checkpoint)
    edge_weight: float = DEFAULT_WEIGHTS[0]
    texture_weight: float = DEFAULT_WEIGHTS[1]
    color_weight: float = DEFAULT_WEIGHTS[2]
    search_depth: int = 10
    nprobe: int | None = None
    no_repeat: bool = False
    assign: str = "greedy"  # no-repeat: "greedy" frame by frame, or "global" (assign.py) per window
    assign_window: int = 0  # --assign global: frames per window, 0 = the whole clip
    seed: int | None = None
    threshold: float = 0.0
    fps_override: float | None = None
    demo: bool = False
    demo_seconds: float = 20.0
    demo_images: int = 1000
    match_batch: int | None = None  # frames per search call; None: enough for FAISS to use BLAS
    # output and run options
    skip_output: bool = False
    checkpoint_batch: int = 10
    restart: bool = False
    restart_if_changed: bool = False  # resume when the match options are the same, else start over
    save_frames: bool = True
    save_samples: int = 0
    sample_interval: int = 1
    crf: int = 20
    preset: str = "veryfast"  # x264 speed/size trade-off (ultrafast .. veryslow)
    verify: bool = True
    pool_root: Path | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("edge_weight", "texture_weight", "color_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        checks: list[tuple[bool, str]] = [
            (self.search_depth >= 1, f"--search-depth must be >= 1, got {self.search_depth}"),
            (self.assign in ASSIGN_MODES, f"--assign must be one of {', '.join(ASSIGN_MODES)}, got {self.assign!r}"),
            (self.assign_window >= 0, f"--assign-window must be >= 0, got {self.assign_window}"),
            (
                self.assign != "global" or self.no_repeat,
                "--assign global shares images out without repeats: it needs --no-repeat",
            ),
            (self.nprobe is None or self.nprobe >= 1, f"--nprobe must be >= 1, got {self.nprobe}"),
            (self.seed is None or self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (
                math.isfinite(self.threshold) and 0 <= self.threshold <= 1,
                f"--threshold must be within [0, 1], got {self.threshold}",
            ),
            (
                self.fps_override is None or (math.isfinite(self.fps_override) and self.fps_override > 0),
                f"--fps-override must be > 0, got {self.fps_override}",
            ),
            (
                math.isfinite(self.demo_seconds) and self.demo_seconds > 0,
                f"--demo-seconds must be > 0, got {self.demo_seconds}",
            ),
            (self.demo_images >= 1, f"--demo-images must be >= 1, got {self.demo_images}"),
            (self.match_batch is None or self.match_batch >= 1, f"match batch must be >= 1, got {self.match_batch}"),
            (self.checkpoint_batch >= 1, f"--checkpoint-batch must be >= 1, got {self.checkpoint_batch}"),
            (self.save_samples >= 0, f"--save-samples must be >= 0, got {self.save_samples}"),
            (self.sample_interval >= 1, f"--sample-interval must be >= 1, got {self.sample_interval}"),
            (0 <= self.crf <= 51, f"--crf must be within 0..51, got {self.crf}"),
            (self.preset in X264_PRESETS, f"unknown x264 preset {self.preset!r}; one of {', '.join(X264_PRESETS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)

    @property
    def max_seconds(self) -> float | None:
        return self.demo_seconds if self.demo else None

    @property
    def image_limit(self) -> int | None:
        return self.demo_images if self.demo else None

    def weights(self) -> dict[str, float]:
        return {"edge": self.edge_weight, "texture": self.texture_weight, "color": self.color_weight}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pool_root"] = None if self.pool_root is None else str(self.pool_root)
        return data


@dataclass
class RenderResult:
    out_dir: Path
    results_path: Path
    video_path: Path | None  # the MP4, None with skip_output
    frames: int
    fps: float
    distinct_images: int
    repeats: int  # frames showing an image an earlier frame chose too (holds excluded)
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
    warnings: list[str] = field(default_factory=list)
    assign: dict[str, Any] = field(default_factory=dict)  # results.json "assign": mode, mean scores
    # IVF rows of this run whose probe held too few unused images: widened_rows, exact_fallback_rows.
    search_stats: dict[str, int] = field(default_factory=dict)

    @property
    def output_fps(self) -> float:
        return self.frames / self.output_seconds if self.output_seconds > 0 else 0.0


def _ratio_text(w: float, h: float) -> str:
    a, b = round(w), round(h)
    g = math.gcd(a, b) or 1
    return f"{a // g}:{b // g}"


class _Run:
    """State shared by the phases of one render."""

    def __init__(self, video: Path, bundle_path: Path, out: Path, options: RenderOptions, on_warning: Warn | None):
        self.video = video
        self.bundle_path = bundle_path
        self.out = out
        self.options = options
        self.on_warning = on_warning
        self.warnings: list[str] = []
        # Rows this run's IVF probes had to widen or search exactly (Searcher.stats).
        self.search_stats: dict[str, int] = {}
        self.bundle: Bundle
        self.info: VideoInfo

    def warn(self, message: str) -> None:
        if message in self.warnings:
            return
        self.warnings.append(message)
        if self.on_warning is not None:
            self.on_warning(message)

    # -- set-up -------------------------------------------------------------------------------

    def open_inputs(self) -> None:
        # The video first: a wrong video path fails at once, before hashing a large bundle.
        self.info = probe_video(self.video)
        self.bundle = open_bundle(self.bundle_path, verify=self.options.verify)
        spec, info, options = self.bundle.spec, self.info, self.options
        if abs(math.log((info.width / info.height) / spec.aspect)) > 0.01:
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

    def match_batch(self) -> int:
        return self.options.match_batch or auto_match_batch(self.bundle.manifest.dim)

    def search_k(self) -> int:
        # With no-repeat, frame j of a batch can find j of its candidates taken by the frames
        # before it in the same batch: k >= batch size keeps one free without a second search.
        depth = self.options.search_depth
        if self.options.assign == "global":
            return candidate_depth(depth)
        return max(depth, self.match_batch()) if self.options.no_repeat else depth

    def search_enough(self) -> int | None:
        # Greedy no-repeat takes one candidate per frame and searches a frame again when its
        # list runs dry, so an IVF row is widened only below the search depth, not below k.
        # --assign global needs every row's full candidate list.
        if self.options.no_repeat and self.options.assign != "global":
            return self.options.search_depth
        return None

    def assign_window(self) -> int:
        """--assign global: frames per window (0 = the whole clip), rounded up to whole match batches.

        Windows then start where batches do, so a run resumed at a window's start searches
        exactly the batches an uninterrupted run searched.
        """
        window, batch = self.options.assign_window, self.match_batch()
        return -(-window // batch) * batch

    def nprobe(self) -> int | None:
        manifest = self.bundle.manifest
        if manifest.index.kind != "ivf":
            return None
        return self.options.nprobe or manifest.index.default_nprobe or None

    def match_options(self) -> dict[str, Any]:
        options = self.options
        return {
            "weights": normalize_weights(self.bundle.manifest.blocks, options.weights()),
            "search_depth": options.search_depth,
            "nprobe": self.nprobe(),
            "no_repeat": options.no_repeat,
            "seed": options.seed,
            "threshold": options.threshold,
            "fps_override": options.fps_override,
            "max_seconds": options.max_seconds,
            "image_limit": options.image_limit,
            "match_batch": self.match_batch(),
            "k": self.search_k(),
            # Only global runs name it: checkpoints of greedy runs made before it existed stay valid.
            **({"assign": "global", "assign_window": self.assign_window()} if options.assign == "global" else {}),
        }

    def pool_size(self) -> int:
        limit = self.options.image_limit
        return self.bundle.count if limit is None else min(limit, self.bundle.count)

    def searcher(self) -> Searcher:
        ivf = None
        if self.bundle.manifest.index.kind == "ivf":
            ivf = open_ivf(self.bundle.path / INDEX)
        return Searcher(self.bundle.vectors, ivf=ivf, nprobe=self.nprobe(), limit=self.options.image_limit)

    # -- phase 1: match -----------------------------------------------------------------------

    def match(
        self, checkpoint: Checkpoint, progress: Progress
    ) -> tuple[list[Choice], dict[str, Any], float, dict[str, float]]:
        """Choose an image for every remaining frame; returns (all choices, end record, seconds, ms per frame)."""
        options, header = self.options, progress.header
        done = len(progress.choices)
        batch = self.match_batch()
        first = done // batch * batch
        reader = FrameReader(
            self.video, fps_override=options.fps_override, max_seconds=options.max_seconds, start_index=first
        )
        pool = self.pool_size()
        if options.no_repeat and reader.expected > pool:
            raise UsageError(
                f"--no-repeat needs one image per output frame: {reader.expected} frames but only {pool} images "
                "available; use a larger pool, --fps-override, or --demo-seconds"
            )
        policy = SelectionPolicy(options.no_repeat, options.search_depth, options.threshold, header.seed or 0)
        selector = Selector(policy, self.bundle.count, progress.choices)
        # The batch a resumed run re-enters was searched with the used ids of the frames before it.
        first_used: UsedSet | None = None
        if options.no_repeat and first < done:
            first_used = UsedSet(self.bundle.count)
            for choice in progress.choices[:first]:
                first_used.add(choice.image_id)
        weights = header.match_options["weights"]
        matcher = FrameMatcher(
            self.bundle.extractor(), self.searcher(), weights, self.search_k(), enough=self.search_enough()
        )
        timings = matcher.timings
        choices = list(progress.choices)
        pending: list[Choice] = []
        started = time.perf_counter()
        bar = progress_bar(reader.expected, "matching", "frame", enabled=options.progress, initial=done)
        batches = prepared_batches(reader, self.bundle.spec.prepared_size(), batch, first=first)
        windows = None
        if options.assign == "global":
            windows = _Windows(selector, matcher, self.assign_window(), batch)
        try:
            while True:
                wait = time.perf_counter()
                item = next(batches, None)
                timings.decode += time.perf_counter() - wait
                if item is None:
                    break
                queries = matcher.queries(item.prepared)
                if windows is not None:
                    windows.add(item, queries, done)
                    if windows.full():  # windows are whole batches: a batch fills one exactly
                        made = windows.solve()
                        choices.extend(made)
                        checkpoint.save(made)  # a window is saved whole, once solved: resume starts at a window
                        bar.update(len(made))
                    continue
                used = first_used if item.frames[0].index == first and first_used is not None else selector.used
                scores, ids = matcher.candidates(queries, used)
                select_start = time.perf_counter()
                for row, frame in enumerate(item.frames):
                    if frame.index < done:
                        continue
                    choice = _choose(selector, matcher, frame, queries[row : row + 1], scores[row], ids[row])
                    choices.append(choice)
                    pending.append(choice)
                    timings.frames += 1
                    if len(pending) >= options.checkpoint_batch:
                        # Emptied first: a Ctrl-C inside save() must not make the finally save them twice.
                        saving, pending = pending, []
                        checkpoint.save(saving)
                    bar.update(1)
                timings.select += time.perf_counter() - select_start
            if windows is not None and windows.frames:
                made = windows.solve()
                choices.extend(made)
                checkpoint.save(made)
                bar.update(len(made))
        finally:
            batches.close()  # stops the decoding thread now, not when the traceback is freed
            bar.close()
            # Choices already made are complete and correct even if this run is stopping.
            saving, pending = pending, []
            checkpoint.save(saving)
            self.search_stats = dict(matcher.searcher.stats)
        frames = len(choices)
        if frames == 0:
            raise InputError(f"no frames could be read from {self.video}")
        end = {
            "frames": frames,
            "fps": reader.fps,
            "expected": reader.expected,
            "decoded": reader.decoded,
            "truncated": reader.truncated,
            "errors": reader.errors,
        }
        checkpoint.finish(end)
        return choices, end, time.perf_counter() - started, timings.per_frame_ms()

    # -- phase 2: output ----------------------------------------------------------------------

    def pool_root(self) -> Path:
        root = self.options.pool_root or self.bundle.pool_root
        if not root.is_dir():
            hint = "" if self.options.pool_root else "; pass --pool-root to where the pool images are now"
            raise InputError(f"pool folder {root} not found{hint}")
        return root

    def source_frames(self) -> Iterator[SourceFrame]:
        reader = FrameReader(self.video, fps_override=self.options.fps_override, max_seconds=self.options.max_seconds)
        return reader.iter()

    def output(self, choices: list[Choice], fps: float, root: Path) -> tuple[Path, str | None, int]:
        """Write the MP4, frame JPEGs and samples; returns (mp4 path, audio mode, missing images)."""
        options, info = self.options, self.info
        frames_dir = self.out / FRAMES_DIR
        samples_dir = self.out / SAMPLES_DIR
        samples = {i * options.sample_interval for i in range(options.save_samples)} & set(range(len(choices)))
        for folder, wanted in ((frames_dir, options.save_frames), (samples_dir, bool(samples))):
            if wanted:
                try:
                    folder.mkdir(exist_ok=True)
                except OSError as exc:
                    raise OutputError(f"cannot create {folder}: {exc.strerror or exc}") from None
        _remove_stale(frames_dir, "frame_", set(range(len(choices))) if options.save_frames else None)
        _remove_stale(samples_dir, "sample_", samples if samples else None)
        mp4 = self.out / f"{self.video.stem}_matched.mp4"
        images = MatchedImages(self.bundle, root, (info.width, info.height))
        jpegs = JpegWriter()
        sources = self.source_frames() if samples else iter(())
        last_sample = max(samples) if samples else -1
        bar = progress_bar(len(choices), "rendering", "frame", enabled=options.progress)
        try:
            with VideoWriter(
                mp4, info.width, info.height, fps, crf=options.crf, preset=options.preset, audio_from=self.video
            ) as writer:
                ids = [c.image_id for c in choices]
                for choice, image in zip(choices, images.iter_images(ids), strict=True):
                    writer.write(image)
                    if options.save_frames:
                        jpegs.submit(frames_dir / f"frame_{choice.index:06d}.jpg", image)
                    if choice.index <= last_sample:
                        frame = next(sources, None)
                        if frame is not None and choice.index in samples:
                            sample = side_by_side(
                                frame.image,
                                image,
                                f"frame {choice.index}  t={choice.time:.2f}s",
                                f"image {choice.image_id}  score {choice.score:.3f}",
                            )
                            jpegs.submit(samples_dir / f"sample_{choice.index:06d}.jpg", sample)
                    bar.update(1)
                jpegs.finish()
                audio = writer.audio_mode
                for message in writer.audio_errors:
                    self.warn(f"audio: {message}")
        finally:
            bar.close()
            images.close()
            jpegs.finish()
        if images.missing:
            first_id, reason = next(iter(sorted(images.missing.items())))
            self.warn(
                f"{len(images.missing)} matched image(s) could not be read and show as grey "
                f"(first: image {first_id}: {reason})"
            )
        return mp4, audio, len(images.missing)


class _Windows:
    """--assign global: the frames of the current window, their queries and candidates, until it is solved."""

    def __init__(self, selector: Selector, matcher: FrameMatcher, size: int, batch: int) -> None:
        self.selector = selector
        self.matcher = matcher
        self.size = size  # 0: the whole clip is one window
        self.batch = batch
        self.frames: list[FrameRef] = []
        self._queries: list[NDArray[np.float32]] = []
        self._scores: list[NDArray[np.float32]] = []
        self._ids: list[NDArray[np.int64]] = []

    def add(self, item: Batch, queries: NDArray[np.float32], done: int) -> None:
        """Search a batch (the images of earlier windows excluded) and keep its frames from ``done`` on."""
        scores, ids = self.matcher.candidates(queries, self.selector.used)
        keep = [row for row, frame in enumerate(item.frames) if frame.index >= done]
        self.frames.extend(item.frames[row] for row in keep)
        self._queries.append(queries[keep])
        self._scores.append(scores[keep])
        self._ids.append(ids[keep])

    def full(self) -> bool:
        return self.size > 0 and len(self.frames) >= self.size

    def _scorer(self, query: NDArray[np.float32]) -> Callable[[int], float]:
        return lambda image_id: self.matcher.score_of(query, image_id)

    def solve(self) -> list[Choice]:
        """Assign the window's images (see assign.py) and record them; returns the window's choices."""
        used = self.selector.used
        assert used is not None, "--assign global runs with no-repeat"
        timings = self.matcher.timings
        started, searched = time.perf_counter(), timings.search
        queries = np.concatenate(self._queries)

        def research(rows: NDArray[np.intp], k: int, excluded: UsedSet) -> Candidates:
            return self.matcher.candidates(queries[rows], excluded, k)

        result = assign_window(
            np.concatenate(self._scores), np.concatenate(self._ids), used, research, batch=self.batch
        )
        choices = []
        for row, frame in enumerate(self.frames):
            choices.append(
                self.selector.assigned(
                    frame,
                    int(result.image_ids[row]),
                    float(result.scores[row]),
                    self._scorer(queries[row]),
                    greedy_score=float(result.greedy_scores[row]),
                )
            )
        self.frames, self._queries, self._scores, self._ids = [], [], [], []
        timings.frames += len(choices)
        # Searches made while solving are counted under search already.
        timings.select += time.perf_counter() - started - (timings.search - searched)
        return choices


def _choose(
    selector: Selector,
    matcher: FrameMatcher,
    frame: FrameRef,
    query: NDArray[np.float32],
    scores: NDArray[np.float32],
    ids: NDArray[np.int64],
) -> Choice:
    """One frame's choice; ``query`` is its weighted vector as a 1-row matrix."""

    def score_of(image_id: int) -> float:
        return matcher.score_of(query[0], image_id)

    def research() -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        s, i = matcher.candidates(query, selector.used)
        return s[0], i[0]

    return selector.choose(frame, scores, ids, score_of, research)


def _remove_stale(folder: Path, prefix: str, keep: set[int] | None) -> None:
    """Delete pictures of an earlier run that this run does not write (all of them when keep is None)."""
    if not folder.is_dir():
        return
    for path in folder.glob(f"{prefix}*.jpg"):
        digits = path.stem[len(prefix) :]
        if digits.isdigit() and (keep is None or int(digits) not in keep):
            path.unlink(missing_ok=True)


def _counts(choices: list[Choice]) -> dict[str, int]:
    seen: set[int] = set()
    repeats = 0
    for choice in choices:
        if choice.fallback != HELD and choice.image_id in seen:
            repeats += 1
        seen.add(choice.image_id)
    return {
        "frames": len(choices),
        "distinct_images": len(seen),
        "repeats": repeats,
        "held": sum(c.fallback == HELD for c in choices),
        "threshold_applied": sum(c.threshold_applied for c in choices),
    }


def _assign_summary(run: _Run, choices: list[Choice]) -> dict[str, Any]:
    """How no-repeat shared the images out: mean score, and for --assign global the greedy comparison.

    Means are over the frames that show their own match (held frames excluded).
    """
    options = run.options
    if not options.no_repeat:
        return {}
    shown = [c for c in choices if c.fallback != HELD]
    mean = float(np.mean([c.score for c in shown])) if shown else 0.0
    if options.assign != "global":
        return {"mode": "greedy", "mean_score": mean, "frames": len(shown)}
    greedy = float(np.mean([c.greedy_score for c in shown if c.greedy_score is not None])) if shown else 0.0
    depth = run.search_k()
    return {
        "mode": "global",
        "window": run.assign_window(),
        "candidates_per_frame": depth,
        "frames": len(shown),
        "mean_score": mean,
        "greedy_mean_score": greedy,
        "mean_score_gain": mean - greedy,
    }


def _results(
    run: _Run, header: Header, choices: list[Choice], end: dict[str, Any], output: dict[str, Any]
) -> dict[str, Any]:
    paths = run.bundle.relative_paths([c.image_id for c in choices])
    info = run.info
    run_only = ("progress", "restart", "restart_if_changed")
    options = {k: v for k, v in run.options.to_dict().items() if k not in run_only}
    return {
        "format": "fluxframe-render-results",
        "format_version": RESULTS_FORMAT,
        "tool_version": __version__,
        "bundle_id": header.bundle_id,
        "bundle": str(run.bundle.path),
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
        "match_options": header.match_options,
        "assign": _assign_summary(run, choices),
        "seed": header.seed,
        "output": output,
        "counts": {
            **_counts(choices),
            "source_frames_decoded": end.get("decoded"),
            "expected_frames": end.get("expected"),
            "truncated": bool(end.get("truncated")),
        },
        "frames": [{**c.to_dict(), "path": p} for c, p in zip(choices, paths, strict=True)],
    }


def render(
    video: Path, bundle: Path, out: Path, options: RenderOptions, *, on_warning: Warn | None = None
) -> RenderResult:
    """Render ``video`` as a collage of ``bundle``'s images into the folder ``out``.

    Resumes from ``out``'s checkpoint when it was made with the same match options;
    raises StateError when it was not (unless ``options.restart``) or when another
    render holds ``out``.
    """
    started = time.perf_counter()
    video, bundle, out = Path(video), Path(bundle), Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    run = _Run(video, bundle, out, options, on_warning)
    with OutputLock(out):
        run.open_inputs()
        # Before a long match, not after it: output needs the pool where it is now.
        root = run.pool_root() if not options.skip_output else None
        # No-repeat never draws: no seed is made up for it, so its results do not vary from run to run.
        seed = options.seed
        if seed is None and not options.no_repeat:
            seed = secrets.randbits(32)
        header = Header(run.bundle.bundle_id, video_identity(video, run.info), run.match_options(), seed)
        try:
            checkpoint, progress = Checkpoint.open(out / CHECKPOINT_NAME, header, restart=options.restart)
        except CheckpointMismatch as exc:
            if not options.restart_if_changed:
                raise
            run.warn(f"starting over: {exc}".split("; rerun with")[0])
            checkpoint, progress = Checkpoint.open(out / CHECKPOINT_NAME, header, restart=True)
        results_path = out / RESULTS_NAME
        resumed = len(progress.choices)
        match_seconds, match_ms = 0.0, dict[str, float]()
        # Until this run writes it, an earlier run's results.json would describe other output.
        results_path.unlink(missing_ok=True)
        try:
            if progress.end is None:
                choices, end, match_seconds, match_ms = run.match(checkpoint, progress)
            else:
                choices, end = progress.choices, progress.end
        finally:
            checkpoint.close()
        if end.get("truncated"):
            first_error = f" ({end['errors'][0]})" if end.get("errors") else ""
            run.warn(
                f"the video ends early: {end['frames']} of the {end['expected']} frames it announces could be "
                f"read{first_error}; rendered what decodes"
            )
        output_started = time.perf_counter()
        output: dict[str, Any] = {"fps": end["fps"], "width": run.info.width, "height": run.info.height}
        mp4: Path | None = None
        audio: str | None = None
        missing = 0
        if root is not None:
            mp4, audio, missing = run.output(choices, float(end["fps"]), root)
            output.update(
                video=mp4.name,
                audio=audio,
                frames_dir=FRAMES_DIR if options.save_frames else None,
                samples_dir=SAMPLES_DIR if options.save_samples else None,
                missing_images=missing,
            )
        else:
            output.update(video=None, audio=None, frames_dir=None, samples_dir=None, missing_images=0)
        output_seconds = time.perf_counter() - output_started if not options.skip_output else 0.0
        atomic_write_json(results_path, _results(run, header, choices, end, output))
    counts = _counts(choices)
    return RenderResult(
        out_dir=out,
        results_path=results_path,
        video_path=mp4,
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
        match_ms_per_frame=match_ms,
        truncated=bool(end.get("truncated")),
        missing_images=missing,
        audio=audio,
        warnings=run.warnings,
        assign=_assign_summary(run, choices),
        search_stats=run.search_stats,
    )
