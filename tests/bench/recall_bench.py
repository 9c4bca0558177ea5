"""IVF recall on real content: frames of the benchmark clip searched in a real JPEG pool.

The synthetic search pools (synth.py) are tiled real features with noise and their
queries are perturbed pool vectors, which an IVF index may find easier than real
video frames. Here the pool is the 20k real JPEGs (crops, scales and colour variants
of package pictures, so many near-duplicates compete for each top-10) and the
queries are the 720p clip's frames, described exactly as ff-render describes them.

Besides recall@10 it reports what a collage sees: how often IVF's best image is the
exact best, and how much similarity the best image loses on average.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_render.match import auto_match_batch
from fluxframe_render.render import RenderOptions
from fluxframe_render.video import FrameReader
from shared.bundle import INDEX, open_bundle
from shared.features.base import weight_query
from shared.images import prepare_image
from shared.search import Searcher, open_ivf
from shared.spec import FeatureSpec
from tests.bench import data
from tests.bench.common import Context, Row, at_least, child_dict, size_label
from tests.bench.searching import Found, recall_at, timed_search

GROUP = "search"
POOL_IMAGES = 20_000
CLIP_SECONDS, CLIP_FPS = 40.0, 25
DEPTH = 10
RECALL = 0.95


def frame_queries(clip: Path, bundle: Path) -> NDArray[np.float32]:
    """Every frame of ``clip`` as ff-render's weighted canny query for ``bundle``."""
    opened = open_bundle(bundle, verify=False)
    extractor = opened.extractor()
    size = opened.spec.prepared_size()
    prepared = [prepare_image(frame.image, size) for frame in FrameReader(clip)]
    return weight_query(extractor.extract(prepared), extractor.blocks, RenderOptions().weights())


def compare(truth: Found, found: Found) -> dict[str, float]:
    """recall@10, top-1 agreement and the best image's mean similarity loss of ``found`` against ``truth``."""
    (true_s, true_i), (got_s, got_i) = truth, found
    return {
        "recall_at_10": recall_at(got_i, true_i),
        "top1_same": float((true_i[:, 0] == got_i[:, 0]).mean()),
        "top1_score_loss": float((true_s[:, 0] - got_s[:, 0]).mean()),
    }


def build_real_ivf(pool: str, dest: str) -> dict[str, Any]:
    """Child process: the real pool's canny IVF bundle (cached: a rebuild of an unchanged pool is a no-op)."""
    result = build_bundle(
        Path(pool), Path(dest), BuildOptions(spec=FeatureSpec(method="canny"), index_kind="ivf", jobs=2, replace=True)
    )
    return {"reused": result.up_to_date, "count": result.indexed, "seconds": result.seconds}


def frame_recall(bundle: str, clip: str) -> dict[str, Any]:
    """Child process: IVF against exact search for every frame of ``clip`` in ``bundle``."""
    path = Path(bundle)
    opened = open_bundle(path, verify=False)
    index = opened.manifest.index
    queries = frame_queries(Path(clip), path)
    batch = auto_match_batch(opened.manifest.dim)
    ivf = open_ivf(path / INDEX)
    exact_ms, truth = timed_search(Searcher(opened.vectors), queries, DEPTH, batch)
    sweep = []
    for nprobe in sorted({index.default_nprobe, *(max(1, index.nlist // d) for d in (128, 64, 32, 16, 8))}):
        ms, found = timed_search(Searcher(opened.vectors, ivf=ivf, nprobe=nprobe), queries, DEPTH, batch)
        sweep.append({"nprobe": nprobe, "ms_per_frame": ms, **compare(truth, found)})
    return {
        "images": opened.count,
        "frames": int(queries.shape[0]),
        "nlist": index.nlist,
        "nprobe": index.default_nprobe,
        "exact_ms_per_frame": exact_ms,
        "sweep": sweep,
    }


def _rows(ctx: Context, r: dict[str, Any], pool: str) -> None:
    where = f"{size_label(r['images'])} {pool}, {r['frames']} frames of the 720p clip"
    setting = f"{where}, nprobe {r['nprobe']} of {r['nlist']} (auto)"
    auto = next(s for s in r["sweep"] if s["nprobe"] == r["nprobe"])
    by_nprobe = ", ".join(f"{s['nprobe']}: {s['recall_at_10']:.3f}" for s in r["sweep"])
    target, met = at_least(auto["recall_at_10"], RECALL)
    ctx.add(
        Row(
            GROUP,
            "IVF recall@10 vs exact, real frames",
            setting,
            auto["recall_at_10"],
            "",
            target,
            met,
            f"by nprobe: {by_nprobe}",
        )
    )
    loss = max(0.0, auto["top1_score_loss"])  # exact and IVF round differently: a few 1e-9 either way
    speed = f"IVF {auto['ms_per_frame']:.3f} ms/frame, exact {r['exact_ms_per_frame']:.3f}"
    note = f"mean similarity the best image loses {loss:.5f}; {speed}"
    ctx.add(Row(GROUP, "IVF best image = exact best, real frames", setting, 100 * auto["top1_same"], "%", note=note))


def run(ctx: Context, large_bundles: dict[int, Path]) -> None:
    """The real pool (always) and, with --large, the large synthetic pools, searched with the clip's frames."""
    images = 2_000 if ctx.quick else POOL_IMAGES
    seconds = 2.0 if ctx.quick else CLIP_SECONDS
    pool = data.pool_dir(images, ctx.jobs)
    clip = data.ensure_clip(seconds, CLIP_FPS, (1280, 720))
    dest = data.BENCH_ROOT / "bundles" / f"canny-real-{size_label(images)}-ivf"
    ctx.log(f"IVF bundle of the {size_label(images)} real JPEGs -> {dest} (cached)")
    built = ctx.isolated(
        GROUP, "tests.bench.recall_bench:build_real_ivf", {"pool": str(pool), "dest": str(dest)}, measure=False
    )
    ctx.detail(GROUP, "real_ivf_bundle", child_dict(built))
    for label, bundle in [("real JPEGs", dest), *(("synthetic vectors", b) for b in large_bundles.values())]:
        ctx.log(f"IVF recall on the clip's frames: {bundle.name}")
        args = {"bundle": str(bundle), "clip": str(clip)}
        r = child_dict(ctx.isolated(GROUP, "tests.bench.recall_bench:frame_recall", args))
        ctx.detail(GROUP, f"frame_recall_{bundle.name}", r)
        since = len(ctx.rows)
        _rows(ctx, r, label)
        if bundle != dest:
            ctx.mark_large_only(since)
