"""A report built the way a render's report sink builds it, from a real render of a real clip.

``render_for_report`` renders a clip made by tests/media.py against a small real pool;
``build_report`` then feeds a ReportBuilder frame by frame, in order: the source frame as
decoded, the output frame the render wrote, and the matched pool photo, with look metrics
computed here on small thumbnails (as DESIGN.md measures them).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_render.render import RenderOptions, render
from fluxframe_render.report import FrameRecord, ReportBuilder, tile_zoom_crop
from fluxframe_render.video import FrameReader
from shared.bundle import open_bundle
from shared.report_html import Image
from shared.spec import FeatureSpec
from tests.media import make_test_video, skimage_images
from tests.pools import pool_variants, render_variant, write_jpeg

CLIP_FPS = 10.0
TILE_GRID = (16, 9)


@dataclass(frozen=True)
class RenderedClip:
    clip: Path
    pool: Path
    bundle: Path
    out: Path


def _pool_without(folder: Path, size: int, left_out: int) -> Path:
    """``size`` real JPEGs cut from every package picture but the first ``left_out`` (the clip's)."""
    variants = [v for v in pool_variants(2 * size, max_side=480) if v.source >= left_out][:size]
    for i, variant in enumerate(variants):
        write_jpeg(folder / f"img-{i:05d}.jpg", render_variant(variant))
    return folder


def render_for_report(folder: Path, *, pool_size: int = 24, pictures: int = 4) -> RenderedClip:
    """A 320x180 clip of ``pictures`` real pictures (one second each) rendered against a pool of
    other real pictures: footage that is in no pool, as a user's is."""
    pool = _pool_without(folder / "pool", pool_size, pictures)
    bundle = folder / "bundle"
    build_bundle(pool, bundle, BuildOptions(spec=FeatureSpec(method="canny"), jobs=1))
    clip = make_test_video(folder / "clip.mp4", skimage_images()[:pictures], fps=CLIP_FPS, audio=False)
    out = folder / "out"
    render(clip, bundle, out, RenderOptions(seed=3, search_depth=3, threshold=0.8))
    return RenderedClip(clip, pool, bundle, out)


def _read(path: Path) -> Image:
    image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, path
    return np.asarray(image, dtype=np.uint8)


def look_metrics(output: Image, source: Image) -> tuple[float, float]:
    """SSIM of grey 64x36 thumbnails and mean CIELAB ΔE of 16x9 thumbnails, output vs source."""

    def grey(image: Image) -> Image:
        return np.asarray(cv2.cvtColor(cv2.resize(image, (64, 36), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY))

    def lab(image: Image) -> np.ndarray[Any, np.dtype[np.float32]]:
        small = cv2.resize(image, (16, 9), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        return np.asarray(cv2.cvtColor(small, cv2.COLOR_BGR2Lab), dtype=np.float32)

    # shared/quality.py will own these metrics; until then the test computes them the documented way.
    ssim = float(structural_similarity(grey(output), grey(source), data_range=255))  # type: ignore[no-untyped-call]
    delta_e = float(np.linalg.norm(lab(output) - lab(source), axis=2).mean())
    return ssim, delta_e


def tile_mosaic(photos: list[Image], size: tuple[int, int], grid: tuple[int, int] = TILE_GRID) -> Image:
    """A frame of ``size`` (width, height) tiled with the photos in turn: what a tile render shows."""
    width, height = size
    columns, rows = grid
    tile_w, tile_h = width // columns, height // rows
    mosaic = np.zeros((tile_h * rows, tile_w * columns, 3), dtype=np.uint8)
    for cell in range(columns * rows):
        row, column = divmod(cell, columns)
        tile = cv2.resize(photos[cell % len(photos)], (tile_w, tile_h), interpolation=cv2.INTER_AREA)
        mosaic[row * tile_h : (row + 1) * tile_h, column * tile_w : (column + 1) * tile_w] = tile
    return mosaic


def build_report(rendered: RenderedClip, *, with_tiles: bool = True) -> tuple[ReportBuilder, dict[str, Any]]:
    """Feed a builder every frame of the render; returns it and the arguments ``write`` takes."""
    results: dict[str, Any] = json.loads((rendered.out / "results.json").read_text())
    frames = results["frames"]
    builder = ReportBuilder(f"{rendered.clip.name} × {rendered.bundle.name}", len(frames))
    previous: int | None = None
    photos: list[Image] = []
    for frame, source in zip(frames, FrameReader(rendered.clip), strict=True):
        output = _read(rendered.out / "matched_frames" / f"frame_{frame['index']:06d}.jpg")
        switched = previous is not None and frame["image_id"] != previous
        previous = frame["image_id"]
        ssim, delta_e = look_metrics(output, source.image)
        record = FrameRecord(
            index=frame["index"],
            time=frame["time"],
            image_id=frame["image_id"],
            image_name=frame["path"],
            score=frame["score"],
            ssim=ssim,
            delta_e=delta_e,
            switched=switched,
            held=frame["fallback"] == "held",
            # The clip shows a new picture every second: those are its cuts.
            cut=frame["index"] > 0 and frame["index"] % round(CLIP_FPS) == 0,
        )
        if builder.wants_thumbnails(record.index, record.switched):
            photo = _read(rendered.pool / frame["path"])
            photos.append(photo)
            builder.add_frame(record, source.image, output, photo)
        else:
            builder.add_frame(record, None, None, None)
    bundle = open_bundle(rendered.bundle)
    counts = Counter(frame["path"] for frame in frames)
    tile_zoom = None
    if with_tiles:
        mosaic = tile_mosaic(photos, (1280, 720))
        tile_zoom = tile_zoom_crop(mosaic, TILE_GRID)
    arguments: dict[str, Any] = {
        "summary": {"counts": results["counts"], "seed": results["seed"], "output": results["output"]},
        "options": results["options"],
        "bundle": {"id": bundle.bundle_id, "method": bundle.spec.method, "images": bundle.count},
        "most_used": counts.most_common(10),
        "tile_zoom": tile_zoom,
    }
    return builder, arguments
