"""Tile mode benchmarks: build-time overhead of the atlas, look on real footage, matching + compose speed.

    python -m tests.bench.tile_bench overhead --images 2000 --jobs 2
    python -m tests.bench.tile_bench look BUNDLE VIDEO... [--grid 32x18] [--png-dir /tmp/tiles]
    python -m tests.bench.tile_bench speed BUNDLE VIDEO [--grid 32x18]

The look metrics are the house's (shared/quality.py): SSIM of grey 64x36 thumbnails,
mean CIELAB ΔE of 16x9 (and 64x36) thumbnails, flicker = mean frame-to-frame ΔE of the
output's 16x9 thumbnail ÷ the source's; plus SSIM at 256x144, where tiles' content shows,
and for colour transfer the SSIM at 256x144 between the mosaic with and without it (the
tiles must stay photos).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import faiss
import numpy as np
from numpy.typing import NDArray

from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_index.ivf import auto_nlist, build_ivf_index
from fluxframe_render.tile_compose import TileComposer, lab_shift
from fluxframe_render.tile_match import TileIndex, TileMatcher, TileRules
from fluxframe_render.tiles import CellGeometry, describe_frame, parse_grid
from shared.bundle import open_bundle
from shared.quality import Thumbnails, delta_e, ssim
from shared.search import open_ivf
from shared.spec import FeatureSpec
from tests.bench.data import pool_dir

Image = NDArray[np.uint8]
BATCH = 16  # frames per matcher call: 9,216 cell queries at 32x18
FINE_CHECK = (256, 144)


def read_frames(path: Path, size: tuple[int, int] | None = None) -> Iterator[Image]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            image = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
            if size is not None and (image.shape[1], image.shape[0]) != size:
                image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
            yield image


def _grey(image: Image, size: tuple[int, int]) -> NDArray[np.uint8]:
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), dtype=np.uint8)


def ssim_fine(a: Image, b: Image) -> float:
    """SSIM of grey 256x144 thumbnails: at the house's 64x36 a 32x18 tile is 2x2 pixels, its content unseen."""
    return ssim(_grey(a, FINE_CHECK), _grey(b, FINE_CHECK))


def flicker(frames: list[Thumbnails]) -> float:
    """Mean frame-to-frame ΔE of the 16x9 thumbnails."""
    steps = [delta_e(b.lab_coarse, a.lab_coarse) for a, b in itertools.pairwise(frames)]
    return float(np.mean(steps)) if steps else 0.0


# --- build overhead -----------------------------------------------------------------------


def overhead(images: int, jobs: int, rounds: int) -> dict[str, object]:
    pool = pool_dir(images, jobs)
    spec = FeatureSpec(method="canny")
    times: dict[str, list[float]] = {"features only": [], "features + tiles": []}
    sizes: dict[str, int] = {}
    worker_shares: list[float] = []
    with tempfile.TemporaryDirectory(dir=pool.parent) as tmp:
        for _ in range(rounds):
            for label, tile_size in (("features only", None), ("features + tiles", 32)):
                dest = Path(tmp) / label.replace(" ", "-")
                shutil.rmtree(dest, ignore_errors=True)
                started = time.perf_counter()
                result = build_bundle(pool, dest, BuildOptions(spec=spec, jobs=jobs, tile_size=tile_size))
                times[label].append(time.perf_counter() - started)
                sizes = {name: int(info["bytes"]) for name, info in result.manifest.files.items()}
                stages = result.stage_seconds
                if tile_size is not None:
                    # Worker seconds are summed over the chunks: on a shared machine they vary less than wall time.
                    rest = sum(stages[k] for k in ("read", "decode", "features", "write"))
                    worker_shares.append(stages["tiles"] / rest)
                print(f"[overhead] {label}: {times[label][-1]:.1f} s {result.stage_seconds}", flush=True)
    base, tiled = min(times["features only"]), min(times["features + tiles"])
    count = images
    return {
        "images": images,
        "jobs": jobs,
        "seconds_features_only": times["features only"],
        "seconds_with_tiles": times["features + tiles"],
        "overhead_pct_wall_best_of": round(100 * (tiled / base - 1), 1),
        "overhead_pct_worker_seconds": [round(100 * share, 1) for share in worker_shares],
        "atlas_bytes_per_image": (sizes.get("atlas.npy", 0) - 128) / count,
        "tiles_bytes_per_image": (sizes.get("tiles.npy", 0) - 128) / count,
        "atlas_gb_per_million": round((sizes.get("atlas.npy", 0) - 128) / count * 1e6 / 1e9, 2),
    }


# --- look on real footage -----------------------------------------------------------------


@dataclass
class LookRow:
    video: str
    setting: str
    ssim: float
    delta_e: float
    delta_e_fine: float
    ssim_256: float
    flicker_ratio: float
    cell_switch_rate: float
    mean_cell_delta_e: float
    ssim_256_to_untransferred: float | None


def render_tiles(
    bundle_path: Path,
    frames: list[Image],
    grid: tuple[int, int],
    rules: TileRules,
    strength: float,
) -> tuple[list[Image], list[NDArray[np.int32]], list[float]]:
    bundle = open_bundle(bundle_path, verify=False)
    tiles = bundle.tile_spec()
    h, w = frames[0].shape[:2]
    geometry = CellGeometry.for_frame(w, h, grid)
    matcher = TileMatcher(TileIndex(bundle.tile_descriptors), grid, rules)
    composer = TileComposer(bundle.atlas, geometry)
    out: list[Image] = []
    grids: list[NDArray[np.int32]] = []
    scores: list[float] = []
    for start in range(0, len(frames), BATCH):
        described = [describe_frame(f, geometry, tiles) for f in frames[start : start + BATCH]]
        for cells, chosen in zip(described, matcher.match(described), strict=True):
            shift = None
            if strength > 0:
                shift = lab_shift(cells, np.asarray(bundle.tile_descriptors[chosen.grid.ravel()]), strength)
            out.append(composer.compose(chosen.grid, shift))
            grids.append(chosen.grid)
            scores.append(float(chosen.distance.mean()))
    return out, grids, scores


def look(bundle: Path, videos: list[Path], grid: tuple[int, int], png_dir: Path | None) -> list[LookRow]:
    ruled = TileRules(max_uses=4, min_distance=3, coherence_margin=2.0)
    settings = {
        "no coherence": (TileRules(coherence_margin=None), 0.0),
        "coherence 2 ΔE": (TileRules(coherence_margin=2.0), 0.0),
        "coherence 4 ΔE": (TileRules(coherence_margin=4.0), 0.0),
        "coherence 2 ΔE, max-uses 4, distance 3": (ruled, 0.0),
        "coherence 2 ΔE + colour 0.5": (TileRules(coherence_margin=2.0), 0.5),
        "coherence 2 ΔE, max-uses 4, distance 3 + colour 0.5": (ruled, 0.5),
    }
    rows = []
    for video in videos:
        source = list(read_frames(video))
        source_thumbs = [Thumbnails.of(f) for f in source]
        source_flicker = flicker(source_thumbs)
        plain: dict[str, list[Image]] = {}
        for name, (rules, strength) in settings.items():
            out, grids, scores = render_tiles(bundle, source, grid, rules, strength)
            out_thumbs = [Thumbnails.of(f) for f in out]
            switches = [float((a != b).mean()) for a, b in itertools.pairwise(grids)]
            untransferred = plain.get(name.split(" + ")[0]) if strength > 0 else None
            pairs = list(zip(out_thumbs, source_thumbs, strict=True))
            row = LookRow(
                video=video.name,
                setting=name,
                ssim=float(np.mean([ssim(o.grey, s.grey) for o, s in pairs])),
                delta_e=float(np.mean([delta_e(o.lab_coarse, s.lab_coarse) for o, s in pairs])),
                delta_e_fine=float(np.mean([delta_e(o.lab_fine, s.lab_fine) for o, s in pairs])),
                ssim_256=float(np.mean([ssim_fine(o, s) for o, s in zip(out, source, strict=True)])),
                flicker_ratio=flicker(out_thumbs) / source_flicker,
                cell_switch_rate=float(np.mean(switches)),
                mean_cell_delta_e=float(np.mean(scores)),
                ssim_256_to_untransferred=None
                if untransferred is None
                else float(np.mean([ssim_fine(o, u) for o, u in zip(out, untransferred, strict=True)])),
            )
            if strength == 0:
                plain[name] = out
            rows.append(row)
            print(json.dumps(row.__dict__, ensure_ascii=False), flush=True)
            if png_dir is not None:
                png_dir.mkdir(parents=True, exist_ok=True)
                for i in (0, len(out) // 2):
                    pair = np.concatenate([source[i], out[i]], axis=1)
                    tag = name.replace(" ", "_").replace(",", "").replace("+", "and").replace("ΔE", "dE")
                    cv2.imwrite(str(png_dir / f"{video.stem}-{i:03d}-{tag}.png"), pair)
    return rows


# --- speed --------------------------------------------------------------------------------


def speed(bundle_path: Path, video: Path, grid: tuple[int, int], frames: int) -> dict[str, float]:
    source = list(read_frames(video, (1280, 720)))[:frames]
    bundle = open_bundle(bundle_path, verify=False)
    tiles = bundle.tile_spec()
    geometry = CellGeometry.for_frame(1280, 720, grid)
    matcher = TileMatcher(TileIndex(bundle.tile_descriptors), grid, TileRules(coherence_margin=2.0))
    composer = TileComposer(bundle.atlas, geometry)
    t_describe = t_match = t_compose = 0.0
    for start in range(0, len(source), BATCH):
        t0 = time.perf_counter()
        described = [describe_frame(f, geometry, tiles) for f in source[start : start + BATCH]]
        t1 = time.perf_counter()
        chosen = matcher.match(described)
        t2 = time.perf_counter()
        for frame in chosen:
            composer.compose(frame.grid)
        t3 = time.perf_counter()
        t_describe, t_match, t_compose = t_describe + t1 - t0, t_match + t2 - t1, t_compose + t3 - t2
    n = len(source)
    total = t_describe + t_match + t_compose
    return {
        "frames": n,
        "pool": bundle.count,
        "describe_ms": 1000 * t_describe / n,
        "match_ms": 1000 * t_match / n,
        "compose_ms": 1000 * t_compose / n,
        "fps": n / total,
    }


def scale(bundle_path: Path, video: Path, grid: tuple[int, int], sizes: list[int], nlist: int, work: Path) -> None:
    """Matching time per 1280x720 frame against larger pools, exact and IVF (exact at 1M: one batch).

    The larger pools' descriptors are the bundle's real ones repeated with Gaussian noise
    (σ = 1 ΔE per dimension): the distribution of real tiles, at sizes no pool here has.
    """
    bundle = open_bundle(bundle_path, verify=False)
    tiles = bundle.tile_spec()
    real = np.asarray(bundle.tile_descriptors)
    geometry = CellGeometry.for_frame(1280, 720, grid)
    frames = [describe_frame(f, geometry, tiles) for f in list(read_frames(video, (1280, 720)))[:48]]
    rng = np.random.default_rng(0)
    work.mkdir(parents=True, exist_ok=True)
    for size in sizes:
        path = work / f"tiles-{size}.npy"
        if not path.exists():
            rows = real[rng.integers(0, len(real), size)] + rng.normal(0, 1, (size, real.shape[1])).astype(np.float32)
            np.save(path, rows.astype(np.float32))
        descriptors = np.load(path, mmap_mode="r")
        indexes: dict[str, TileIndex] = {"exact": TileIndex(descriptors)}
        lists = nlist or auto_nlist(size)
        index_path = work / f"tiles-{size}-{lists}.faiss"
        if not index_path.exists():
            started = time.perf_counter()
            build_ivf_index(path, index_path, nlist=lists, progress=False, metric=faiss.METRIC_L2)
            print(f"[scale] IVF{lists} over {size:,}: {time.perf_counter() - started:.0f} s", flush=True)
        indexes["ivf"] = TileIndex(descriptors, ivf=open_ivf(index_path))
        for kind, index in indexes.items():
            batches = frames if kind == "ivf" or size < 100_000 else frames[:BATCH]
            matcher = TileMatcher(index, grid, TileRules(max_uses=4, min_distance=3, coherence_margin=2.0))
            started = time.perf_counter()
            for start in range(0, len(batches), BATCH):
                matcher.match(batches[start : start + BATCH])
            per_frame = 1000 * (time.perf_counter() - started) / len(batches)
            print(
                json.dumps(
                    {
                        "pool": size,
                        "search": kind,
                        "match_ms_per_frame": round(per_frame, 1),
                        "exact_fallback_rows": index.exact_fallback_rows,
                    }
                ),
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p = sub.add_parser("look")
    p.add_argument("bundle", type=Path)
    p.add_argument("videos", type=Path, nargs="+")
    p.add_argument("--grid", default="32x18")
    p.add_argument("--png-dir", type=Path)
    p = sub.add_parser("speed")
    p.add_argument("bundle", type=Path)
    p.add_argument("video", type=Path)
    p.add_argument("--grid", default="32x18")
    p.add_argument("--frames", type=int, default=128)
    p = sub.add_parser("scale")
    p.add_argument("bundle", type=Path)
    p.add_argument("video", type=Path)
    p.add_argument("--grid", default="32x18")
    p.add_argument("--sizes", default="20000,1000000")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists; 0: the build's auto rule")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fluxframe-tile-scale")
    args = parser.parse_args()
    if args.command == "overhead":
        print(json.dumps(overhead(args.images, args.jobs, args.rounds), indent=2))
    elif args.command == "look":
        look(args.bundle, args.videos, parse_grid(args.grid), args.png_dir)
    elif args.command == "scale":
        sizes = [int(x) for x in args.sizes.split(",")]
        scale(args.bundle, args.video, parse_grid(args.grid), sizes, args.nlist, args.work)
    else:
        print(json.dumps(speed(args.bundle, args.video, parse_grid(args.grid), args.frames), indent=2))


if __name__ == "__main__":
    main()
