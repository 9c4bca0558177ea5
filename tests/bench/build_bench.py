"""Build throughput and memory: ff-index's build_bundle on a real-content JPEG pool.

Every build runs in a fresh process (worker start-up and all) into an empty folder,
on a pool whose files are already in the page cache, so the figures are the
extraction pipeline's, not the disk's. img/s and the stage seconds are read from the
bundle's build summary (fluxframe_index.summary), which times the whole build_bundle
call: scan, decode, features, shard writes, assembly and the final sha256 of every file.

The first rows set the build beside its limit, measured alternately in the same run
(issue #14): canny with --jobs 2 against reading and decoding the same files at the same
DCT scale in 2 processes and nothing else (>= 0.55x). The target is read on the 20k pool,
where the build runs at its steady rate: the limit's processes are started before its
clock, the build's inside it (~0.3 s for loky's two workers, 5 % of a 5k build, 1 % of a
20k one, nothing of the 500K+ builds FluxFrame is for). The 5k pair stays as a row of its
own, so the start-up's share stays visible.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2

from fluxframe_index.build import BuildOptions, build_bundle, staging_dir
from fluxframe_index.scan import scan_pool
from fluxframe_index.summary import read_build_summary
from shared.errors import ImageDecodeError
from shared.images import decode_image, read_image_bytes
from shared.spec import CLASSIC_METHODS, FeatureSpec
from tests.bench import data
from tests.bench.common import MB, Context, Row, at_least, best_pairs, child_dict, size_label

GROUP = "build"
SMALL_POOL = 5_000
LARGE_POOL = 20_000
RSS_METHOD = "canny"
# img/s with --jobs 2 that the issue asks for on this 2-core machine.
TARGETS = {"canny": 600.0, "spatial_color": 500.0, "hog": 300.0}
RSS_TOLERANCE = 1.10  # peak RSS at 20k within 10% of 5k
# The limit of issue #14: canny --jobs 2 against decoding the same files alone in 2 processes.
LIMIT_METHOD = "canny"
LIMIT_JOBS = 2
BUILD_VS_DECODE = 0.55
LIMIT_REPEATS = 2  # the build and its limit, alternately; the fastest of each counts
LIMIT_ROW = "canny build / decode alone"
LIMIT_ROWS = (LIMIT_ROW,)
LIMITS_SECTION = "build-limits"  # docs/performance.md's section for it (report.limits_section)
LIMITS_REPEATED = f"{LIMIT_REPEATS} times"
CHUNK_SIZE = 256  # BuildOptions' default; the decode-alone limit hands out the same chunks


def build_once(
    pool: str, dest: str, method: str, jobs: int, grid: int = 2, chunk_size: int = CHUNK_SIZE, model_sha256: str = ""
) -> dict[str, Any]:
    """Child process: one fresh build; returns its counts and the timings of its build summary."""
    target = Path(dest)
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(staging_dir(target.absolute()), ignore_errors=True)
    spec = FeatureSpec(method=method, spatial_grid=grid, model_sha256=model_sha256)
    result = build_bundle(Path(pool), target, BuildOptions(spec=spec, jobs=jobs, chunk_size=chunk_size))
    summary = read_build_summary(target, result.manifest)
    if summary is None:
        raise RuntimeError(f"{target}: the build left no build summary of its bundle")
    timings = summary["timings"]
    parts = timings["extract_parts_s"]
    worker = sum(parts.values())
    decode = parts["read"] + parts["decode"]
    return {
        "method": method,
        "jobs": jobs,
        "grid": grid,
        "indexed": summary["images"],
        "rejected": summary["rejected"],
        "seconds": timings["wall_s"],
        "img_per_s": summary["images"] / timings["wall_s"],
        "timings": timings,
        # Worker part times are summed over workers; the share is of their busy extract time.
        "decode_share": decode / worker if worker > 0 else 0.0,
        "dim": result.manifest.dim,
    }


def _decode_files(paths: list[str], size: tuple[int, int]) -> int:
    """Worker: read and decode each file as a build does (same calls, same DCT scale); how many decoded."""
    cv2.setNumThreads(1)  # as the build's workers: the parallelism is the processes'
    decoded = 0
    for path in paths:
        try:
            decode_image(read_image_bytes(Path(path)), min_size=size, aspect=size[0] / size[1])
            decoded += 1
        except ImageDecodeError:
            pass
    return decoded


def decode_alone(pool: str, jobs: int, method: str = LIMIT_METHOD, chunk_size: int = CHUNK_SIZE) -> dict[str, Any]:
    """Child process: the pool's files read and decoded in ``jobs`` processes, and nothing else.

    The build's limit: the files of its scan, in its chunks, through the same
    read_image_bytes and decode_image calls at the spec's prepared size (so at the same DCT
    scale). The worker processes are forked and warmed up before the clock starts, so
    this is the decoder's throughput alone; the build's figure includes its start-up.
    """
    scan = scan_pool(Path(pool))
    size = FeatureSpec(method=method).prepared_size()
    paths = [str(scan.root / e.path) for e in scan.entries]
    chunks = [paths[i : i + chunk_size] for i in range(0, len(paths), chunk_size)]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as workers:
        list(workers.map(_decode_files, [paths[:1]] * jobs, [size] * jobs))
        started = time.perf_counter()
        decoded = sum(workers.map(_decode_files, chunks, [size] * len(chunks)))
        seconds = time.perf_counter() - started
    return {"images": len(paths), "decoded": decoded, "seconds": seconds, "img_per_s": len(paths) / seconds}


def warm_page_cache(pool: Path) -> int:
    """Read every pool file once, so that each build measures decoding, not the disk."""
    total = 0
    for folder, _dirs, files in os.walk(pool, followlinks=True):
        for name in files:
            total += len((Path(folder) / name).read_bytes())
    return total


def measure(ctx: Context, pool: Path, method: str, jobs: int, grid: int = 2, model_sha256: str = "") -> dict[str, Any]:
    dest = ctx.work / f"build-{method}-{grid}-{jobs}"
    warm_page_cache(pool)  # other work may have pushed the pool out of the page cache since the last build
    args = {"pool": str(pool), "dest": str(dest), "method": method, "jobs": jobs, "grid": grid}
    if model_sha256:
        args["model_sha256"] = model_sha256
    result = child_dict(ctx.isolated(GROUP, "tests.bench.build_bench:build_once", args))
    shutil.rmtree(dest, ignore_errors=True)
    return result


def _stage_note(timings: dict[str, Any]) -> str:
    """Busy / waiting seconds per stage and the workers' extract seconds per part, from a build summary."""
    stages = ", ".join(f"{k} {v['busy_s']:.1f}/{v['waiting_s']:.1f}" for k, v in timings["stages"].items())
    parts = ", ".join(f"{k} {v:.1f}" for k, v in timings["extract_parts_s"].items())
    return f"busy/waiting s: {stages}; worker s: {parts}"


def limit(ctx: Context, pool: Path, pool_n: int, *, steady: bool) -> None:
    """canny --jobs 2 beside decoding the same files alone, alternately (issue #14).

    ``steady``: the pool the target is read on (see the module's docstring); otherwise a row without one.
    """
    setting = f"{size_label(pool_n)} JPEGs, --jobs {LIMIT_JOBS}"

    def decode() -> dict[str, Any]:
        ctx.log(f"decoding {size_label(pool_n)} pool files alone in {LIMIT_JOBS} processes")
        warm_page_cache(pool)
        args = {"pool": str(pool), "jobs": LIMIT_JOBS}
        return child_dict(ctx.isolated(GROUP, "tests.bench.build_bench:decode_alone", args))

    def build() -> dict[str, Any]:
        ctx.log(f"building {LIMIT_METHOD} on {size_label(pool_n)} JPEGs with --jobs {LIMIT_JOBS}")
        return measure(ctx, pool, LIMIT_METHOD, LIMIT_JOBS)

    def speed(r: dict[str, Any]) -> float:
        return float(r["img_per_s"])

    pair = best_pairs(decode, build, speed, speed, LIMIT_REPEATS)
    assert pair is not None  # a build either measures or raises
    decoded, built = pair
    ratio = built["img_per_s"] / decoded["img_per_s"]
    ctx.detail(GROUP, f"limit_{size_label(pool_n)}", {"build": built, "decode_alone": decoded})
    note = (
        f"{built['img_per_s']:.0f} img/s vs decode alone {decoded['img_per_s']:.0f} img/s; "
        f"peak RSS {built['peak_tree_rss_mb']:.0f} MB; {_stage_note(built['timings'])}"
    )
    if steady:
        target, met = f">= {BUILD_VS_DECODE}", ratio >= BUILD_VS_DECODE
    else:
        target, met = "", None
        note = f"the build's worker start-up included, the limit's not (the target is read at the larger pool); {note}"
    ctx.add(Row(GROUP, LIMIT_ROW, setting, ratio, "x", target, met, note))


def run(ctx: Context) -> None:
    small_n, large_n = (1_000, 2_000) if ctx.quick else (SMALL_POOL, LARGE_POOL)
    small = data.pool_dir(small_n, ctx.jobs)
    large = data.pool_dir(large_n, ctx.jobs)
    ctx.log(f"warming the page cache with {size_label(large_n)} pool files")
    pool_mb = warm_page_cache(large) / MB
    ctx.detail(GROUP, "pool", {"images": large_n, "mb": round(pool_mb, 1), "path": str(large)})
    runs: list[dict[str, Any]] = []
    small_label = f"{size_label(small_n)} JPEGs"
    limit(ctx, large, large_n, steady=True)
    limit(ctx, small, small_n, steady=False)
    for method in CLASSIC_METHODS:
        for jobs in (1, 2):
            ctx.log(f"building {method} on {small_label} with --jobs {jobs}")
            r = measure(ctx, small, method, jobs)
            runs.append({**r, "pool": small_n})
            target, met = ("", None)
            if jobs == 2 and method in TARGETS:
                target, met = at_least(r["img_per_s"], TARGETS[method])
            ctx.add(
                Row(GROUP, f"{method} img/s", f"{small_label}, --jobs {jobs}", r["img_per_s"], "img/s", target, met)
            )
        two = runs[-1]
        ctx.add(
            Row(
                GROUP,
                f"{method} decode share",
                f"{small_label}, --jobs 2; read+decode / worker extract time",
                100 * two["decode_share"],
                "%",
                note=_stage_note(two["timings"]),
            )
        )
    ctx.log(f"building {RSS_METHOD} on {size_label(large_n)} JPEGs with --jobs 2 (memory)")
    big = measure(ctx, large, RSS_METHOD, 2)
    runs.append({**big, "pool": large_n})
    ctx.add(Row(GROUP, f"{RSS_METHOD} img/s", f"{size_label(large_n)} JPEGs, --jobs 2", big["img_per_s"], "img/s"))
    base = next(r for r in runs if r["method"] == RSS_METHOD and r["jobs"] == 2 and r["pool"] == small_n)
    for r, n in ((base, small_n), (big, large_n)):
        target, met = ("", None)
        if n == large_n:
            target, met = (
                f"<= {RSS_TOLERANCE:.2f} x {size_label(small_n)}",
                r["peak_tree_rss_mb"] <= RSS_TOLERANCE * base["peak_tree_rss_mb"],
            )
        ctx.add(
            Row(
                GROUP,
                "build peak RSS",
                f"{RSS_METHOD}, {size_label(n)} JPEGs, --jobs 2; all processes",
                r["peak_tree_rss_mb"],
                "MB",
                target,
                met,
                note=(
                    f"without file-backed pages {r['peak_tree_anon_mb']:.0f} MB; "
                    f"largest process {r['child_maxrss_mb']:.0f} MB"
                ),
            )
        )
    ctx.detail(GROUP, "runs", runs)
