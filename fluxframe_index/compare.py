"""ff-index compare: every ready feature method on the user's own clip and a sample of their pool.

It is how a user chooses a method before indexing 500K photos. For each method a small
bundle is built (``build_bundle``) over the same deterministic sample of the pool, a few
frames spread over the clip are matched exactly as ff-render matches them (the bundle's
extractor, ``weight_query`` with the default weights, ``Searcher``), and each frame's best
pick is measured against the frame with the look metrics of ``shared.quality``. The bundles
live in a work folder inside OUT that is removed when the comparison ends, however it ends.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from fluxframe_index.build import BuildOptions, BuildResult, build_bundle
from fluxframe_index.clip_frames import ClipFrame, spread_frames
from fluxframe_index.compare_page import write_page
from fluxframe_index.compare_results import Comparison, FrameShot, MethodRun, Pick, Picture, duration_text
from fluxframe_index.extract import ChunkStats
from fluxframe_index.pool_sample import link_sample, spread_sample
from fluxframe_index.scan import scan_pool
from shared.bundle import Bundle, open_bundle
from shared.errors import InputError, UsageError
from shared.features.base import DEFAULT_WEIGHTS, Image, weight_query
from shared.features.registry import method_info
from shared.images import load_prepared, prepare_image
from shared.options import option, validate_fields
from shared.quality import Thumbnails, delta_e, ssim
from shared.search import Searcher
from shared.spec import ALL_METHODS, NEURAL_METHODS, FeatureSpec

COMPARE = "Comparison"
OUTPUT = "Output"
PAGE_NAME = "compare.html"
WORK_NAME = ".ff-compare-work"  # hidden: a pool scan skips it, should OUT lie inside the pool
MIN_IMAGES = 10  # fewer pool images tell nothing about a method
MAX_FRAMES = 20  # frames are held whole until prepared: 20 4K frames are ~500 MB
PICK_WIDTH = 640  # a pick is loaded at the frame's aspect, at most this wide (the metrics use 64x36)
# A few frames match in milliseconds: the best of a few runs, so that a neighbour's burst on a
# shared machine is not taken for the method's cost.
MATCH_REPEATS = 3


@dataclass(frozen=True)
class CompareOptions:
    """Every ff-index compare option; its command line is generated from these fields."""

    frames: int = option(
        5, "Frames of VIDEO to match, spread evenly over the clip.", COMPARE, minimum=1, maximum=MAX_FRAMES
    )
    images: int = option(
        1000,
        "Pool images each method indexes: the same evenly spread sample for every method.",
        COMPARE,
        minimum=MIN_IMAGES,
    )
    methods: str | None = option(
        None,
        "Comma-separated methods to compare (see `ff-index methods`).",
        COMPARE,
        default_text="every ready one",
        metavar="A,B,...",
    )
    jobs: int = option(
        os.cpu_count() or 1,
        "Worker processes building each bundle.",
        COMPARE,
        minimum=1,
        maximum=256,
    )
    out: Path = option(
        Path("compare-out"),
        "Folder that receives compare.html; the small bundles are built in a work folder inside it and removed.",
        OUTPUT,
        metavar="DIR",
    )

    def __post_init__(self) -> None:
        validate_fields(self)
        self.method_names()

    def method_names(self) -> list[str] | None:
        """The methods asked for, in the order given (None: every ready one); an unknown name is refused."""
        if self.methods is None:
            return None
        names = [name.strip() for name in self.methods.split(",") if name.strip()]
        if not names:
            raise UsageError(f"--methods names no method ({self.methods!r}); e.g. --methods canny,hog")
        for name in names:
            if name not in ALL_METHODS:
                raise UsageError(f"--methods: unknown method {name!r}; choose from {', '.join(ALL_METHODS)}")
        return list(dict.fromkeys(names))


Report = Callable[[str], None]


def _ignore(_: str) -> None:
    pass


def clip_aspect(width: int, height: int) -> tuple[int, int]:
    """The frame's W:H in small integers (854x480 -> 16:9), as FeatureSpec takes it."""
    ratio = Fraction(width, height).limit_denominator(32)
    return ratio.numerator, ratio.denominator


def _specs(
    methods: list[str] | None, aspect: tuple[int, int], report: Report
) -> tuple[list[FeatureSpec], list[tuple[str, str]]]:
    """Specs of the methods that can run, and (method, why) of those skipped (a neural model not exported)."""
    specs: list[FeatureSpec] = []
    skipped: list[tuple[str, str]] = []
    for name in methods if methods is not None else list(ALL_METHODS):
        ready, command = method_info(name).readiness()
        if not ready:
            skipped.append((name, f"its model is not exported: run `{command}`"))
            continue
        model_sha = ""
        if name in NEURAL_METHODS:
            from shared.features.neural import resolve_model

            _, model_sha = resolve_model(name)
        specs.append(FeatureSpec(method=name, aspect_w=aspect[0], aspect_h=aspect[1], model_sha256=model_sha))
    if skipped:
        names = " and ".join(name for name, _ in skipped)
        report(f"skipping {names}: no exported model (`ff-index methods` says how to export one)")
    return specs, skipped


def compare_methods(
    video: Path, pool: Path, options: CompareOptions, *, report: Report = _ignore
) -> tuple[Comparison, Path]:
    """Compare the methods on ``video`` and a sample of ``pool``; write OUT/compare.html.

    Returns the comparison and the page's path. Bad input (no video, an empty or too small
    pool, no method ready) is refused before anything is written; whatever happens later,
    the work folder goes, and so does OUT when this call made it and did not finish.
    """
    started = time.perf_counter()
    if options.out.exists() and not options.out.is_dir():
        raise UsageError(f"--out {options.out}: exists and is not a folder")
    clip = list(spread_frames(video, options.frames))
    height, width = clip[0].image.shape[:2]
    aspect = clip_aspect(width, height)
    scan = scan_pool(pool)
    if len(scan.entries) < MIN_IMAGES:
        found = f"only {len(scan.entries)} image files" if scan.entries else "no image files"
        raise UsageError(f"{pool}: {found} found; a comparison needs at least {MIN_IMAGES}")
    specs, skipped = _specs(options.method_names(), aspect, report)
    if not specs:
        raise UsageError("no method to compare is ready; see `ff-index methods`")
    sample = spread_sample(scan, options.images)
    if len(sample) < options.images:
        report(f"the pool holds {len(sample)} images: each method indexes all of them")

    out = options.out
    made = _first_missing(out)  # removed again if the comparison does not finish
    work = out / WORK_NAME
    finished = False
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)  # left by a killed run
        sampled = _Sample(pool, work / "sample", len(sample))
        link_sample(scan.root, sample, sampled.folder)
        prepared = {spec.prepared_size() for spec in specs}
        frames, queries_by_size = _keep(clip, prepared)
        del clip  # only thumbnails and prepared frames from here on
        if options.jobs > 1:
            _warm_up_workers(specs[0], work, sampled, options.jobs)
        runs = []
        for spec in specs:
            report(f"{spec.method}: indexing {len(sample)} images ...")
            run = _run_method(spec, work, sampled, options.jobs, frames, queries_by_size[spec.prepared_size()])
            report(
                f"{spec.method}: {run.build_rate:.0f} img/s (500K ≈ {duration_text(run.estimated_pool_seconds)}), "
                f"{run.match_ms_per_frame:.1f} ms/frame, "
                f"look {run.look:.2f} (SSIM {run.mean('ssim'):.3f}, ΔE {run.mean('delta_e'):.1f})"
            )
            runs.append(run)
        comparison = Comparison(
            video=video,
            pool=pool,
            pool_images=len(scan.entries),
            aspect=aspect,
            frames=frames,
            runs=runs,
            skipped=skipped,
            weights=DEFAULT_WEIGHTS,
            seconds=time.perf_counter() - started,
        )
        page = out / PAGE_NAME
        write_page(comparison, page)
        finished = True
        return comparison, page
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made is not None and not finished:
            shutil.rmtree(made, ignore_errors=True)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder that making ``path`` would create (None when it exists)."""
    missing = None
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            return missing
        missing = folder
    return missing


def _keep(
    clip: list[ClipFrame], sizes: set[tuple[int, int]]
) -> tuple[list[FrameShot], dict[tuple[int, int], list[Image]]]:
    """What the comparison needs of each frame: its thumbnails, and the frame prepared at every size asked."""
    shots = [
        FrameShot(
            f.position,
            f.time,
            (f.image.shape[1], f.image.shape[0]),
            Picture.of(f.image),
            Thumbnails.of(f.image),
        )
        for f in clip
    ]
    prepared = {size: [prepare_image(f.image, size) for f in clip] for size in sizes}
    return shots, prepared


def _warm_up_workers(spec: FeatureSpec, work: Path, sample: _Sample, jobs: int) -> None:
    """Start the build's worker processes (and their imports) before any build is timed.

    The first build would otherwise pay the start-up alone (~2 s on 2 cores, measured) and
    look slower than the same method measured second.
    """
    warm_up = BuildOptions(spec=spec, jobs=jobs, chunk_size=1, limit=2 * jobs)
    _build(sample, work / "warm-up", warm_up)


@dataclass(frozen=True)
class _Sample:
    pool: Path  # as the user named it
    folder: Path  # the links to the sampled files
    count: int


def _build(sample: _Sample, dest: Path, options: BuildOptions) -> BuildResult:
    """build_bundle over the sample; a sample of which nothing decodes is named as the user knows it."""
    decoded = 0

    def count(stats: ChunkStats) -> None:
        nonlocal decoded
        decoded += stats.ok

    try:
        return build_bundle(sample.folder, dest, options, on_chunk=count)
    except InputError:
        if decoded:
            raise
        raise InputError(
            f"{sample.pool}: none of the {sample.count} sampled image files could be decoded "
            "(`ff-index build` on the pool lists each file's reason)"
        ) from None


def _run_method(
    spec: FeatureSpec, work: Path, sample: _Sample, jobs: int, frames: list[FrameShot], prepared: list[Image]
) -> MethodRun:
    """Build ``spec``'s bundle over the sample, match the frames with it, measure the picks."""
    # Small chunks keep every worker busy on a small sample (a whole sample in one chunk is one worker's job).
    chunk = max(8, min(256, math.ceil(sample.count / (4 * jobs))))
    built = _build(sample, work / "bundles" / spec.method, BuildOptions(spec=spec, jobs=jobs, chunk_size=chunk))
    bundle = open_bundle(built.bundle, verify=False)
    extractor = bundle.extractor()
    searcher = Searcher(bundle.vectors)
    # One frame first: loading a model or a projection happens once per render, not per frame.
    searcher.search(weight_query(extractor.extract(prepared[:1]), extractor.blocks, DEFAULT_WEIGHTS), 1)
    match_seconds = math.inf
    for _ in range(MATCH_REPEATS):
        started = time.perf_counter()
        queries = weight_query(extractor.extract(prepared), extractor.blocks, DEFAULT_WEIGHTS)
        scores, ids = searcher.search(queries, 1)
        match_seconds = min(match_seconds, time.perf_counter() - started)
    picks = [_pick(bundle, frame, int(ids[row, 0]), float(scores[row, 0])) for row, frame in enumerate(frames)]
    return MethodRun(
        method=spec.method,
        dim=bundle.manifest.dim,
        images=built.indexed,
        build_seconds=built.seconds,
        worker_seconds=_worker_seconds(built),
        jobs=jobs,
        match_seconds=match_seconds,
        picks=picks,
    )


def _worker_seconds(built: BuildResult) -> float:
    return sum(built.stage_seconds.get(stage, 0.0) for stage in ("read", "decode", "features"))


def _pick(bundle: Bundle, frame: FrameShot, image_id: int, score: float) -> Pick:
    """The picked image as ff-render would show it in place of the frame (centre-cropped to its aspect)."""
    if image_id < 0:
        raise InputError(f"{bundle.path}: no image matched frame {frame.position}")
    width, height = frame.size
    size = (min(width, PICK_WIDTH), max(1, round(min(width, PICK_WIDTH) * height / width)))
    image, _ = load_prepared(bundle.image_paths([image_id])[0], size)
    shown = Thumbnails.of(image)
    return Pick(
        image_id=image_id,
        name=bundle.relative_paths([image_id])[0],
        score=score,
        ssim=ssim(frame.thumbnails.grey, shown.grey),
        delta_e=delta_e(frame.thumbnails.lab_coarse, shown.lab_coarse),
        picture=Picture.of(image),
    )
