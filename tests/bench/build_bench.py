"""Build throughput and memory: ff-index's build_bundle on a real-content JPEG pool.

Every build runs in a fresh process (worker start-up and all) into an empty folder,
on a pool whose files are already in the page cache, so the figures are the
extraction pipeline's, not the disk's. img/s counts the whole build_bundle call:
scan, decode, features, shard writes, assembly and the final sha256 of every file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from fluxframe_index.build import BuildOptions, build_bundle, staging_dir
from shared.spec import CLASSIC_METHODS, FeatureSpec
from tests.bench import data
from tests.bench.common import MB, Context, Row, at_least, child_dict, size_label

GROUP = "build"
SMALL_POOL = 5_000
LARGE_POOL = 20_000
RSS_METHOD = "canny"
# img/s with --jobs 2 that the issue asks for on this 2-core machine.
TARGETS = {"canny": 600.0, "spatial_color": 500.0, "hog": 300.0}
RSS_TOLERANCE = 1.10  # peak RSS at 20k within 10% of 5k


def build_once(
    pool: str, dest: str, method: str, jobs: int, grid: int = 2, chunk_size: int = 256, model_sha256: str = ""
) -> dict[str, Any]:
    """Child process: one fresh build; returns its counts and timings."""
    target = Path(dest)
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(staging_dir(target.absolute()), ignore_errors=True)
    spec = FeatureSpec(method=method, spatial_grid=grid, model_sha256=model_sha256)
    result = build_bundle(Path(pool), target, BuildOptions(spec=spec, jobs=jobs, chunk_size=chunk_size))
    stages = dict(result.stage_seconds)
    worker = sum(stages.get(k, 0.0) for k in ("read", "decode", "features", "write"))
    decode = stages.get("read", 0.0) + stages.get("decode", 0.0)
    return {
        "method": method,
        "jobs": jobs,
        "grid": grid,
        "indexed": result.indexed,
        "rejected": len(result.rejected),
        "seconds": result.seconds,
        "img_per_s": result.indexed / result.seconds,
        "stage_seconds": stages,
        # Worker stage times are summed over workers; the share is of that busy time.
        "decode_share": decode / worker if worker > 0 else 0.0,
        # What the pool's decode alone would allow with this many workers: the floor of the build.
        "decode_ceiling_img_per_s": jobs * result.indexed / decode if decode > 0 else 0.0,
        "dim": result.manifest.dim,
    }


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


def run(ctx: Context) -> None:
    small_n, large_n = (1_000, 2_000) if ctx.quick else (SMALL_POOL, LARGE_POOL)
    small = data.pool_dir(small_n, ctx.jobs)
    large = data.pool_dir(large_n, ctx.jobs)
    ctx.log(f"warming the page cache with {size_label(large_n)} pool files")
    pool_mb = warm_page_cache(large) / MB
    ctx.detail(GROUP, "pool", {"images": large_n, "mb": round(pool_mb, 1), "path": str(large)})
    runs: list[dict[str, Any]] = []
    small_label = f"{size_label(small_n)} JPEGs"
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
                f"{small_label}, --jobs 2; read+decode / worker time",
                100 * two["decode_share"],
                "%",
                note=f"decode alone would allow {two['decode_ceiling_img_per_s']:.0f} img/s",
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
