"""Benchmark data made on the spot from package pictures, cached under .bench/ so reruns reuse it.

- a real-content JPEG pool: crops, scales and colour variants of skimage (and, when
  scikit-learn is installed, its two sample photos) pictures, long side 640..1280 px,
  quality 86..94, in folders of 1,000 (``pool_dir(n)`` gives a folder with exactly n);
- a 720p H.264 clip with AAC audio that pans and zooms over the same pictures.

Nothing is downloaded: only pictures that ship inside the installed packages are used.
"""

from __future__ import annotations

import functools
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import skimage.data
from numpy.typing import NDArray

from shared.atomic import atomic_write_json
from tests.pools import SKIMAGE_COLOUR

# Beside the checkout's Makefile (`make clean` removes it), whatever the working folder.
BENCH_ROOT = Path(__file__).resolve().parents[2] / ".bench"
PART_SIZE = 1000
POOL_VERSION = 1  # bump when the generator changes, so cached pools are remade
MIN_LONG_SIDE, MAX_LONG_SIDE = 640, 1280

_COLOUR = (*SKIMAGE_COLOUR, "colorwheel", "logo")
_GREY = ("camera", "moon", "brick", "grass", "gravel", "cell", "coins", "clock", "page", "text")

Image = NDArray[np.uint8]


def _to_bgr(array: NDArray[np.generic]) -> Image:
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    a = a.astype(np.uint8)
    if a.ndim == 2:
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if a.shape[2] == 4:
        alpha = a[:, :, 3:4].astype(np.uint16)
        a = ((a[:, :, :3].astype(np.uint16) * alpha + 128 * (255 - alpha)) // 255).astype(np.uint8)
    return np.ascontiguousarray(a[:, :, 2::-1])


@functools.cache
def source_images() -> tuple[Image, ...]:
    """BGR pictures shipped with scikit-image (and scikit-learn's two photos when it is installed)."""
    out = [_to_bgr(getattr(skimage.data, name)()) for name in _COLOUR]
    left, right, _ = skimage.data.stereo_motorcycle()  # type: ignore[no-untyped-call]
    out += [_to_bgr(left), _to_bgr(right)]
    out += [_to_bgr(getattr(skimage.data, name)()) for name in _GREY]
    try:
        from sklearn.datasets import load_sample_images

        out += [_to_bgr(img) for img in load_sample_images().images]
    except ImportError:
        pass  # scikit-learn is a dev extra; the pool is still varied without its two photos
    return tuple(out)


def variant(index: int) -> tuple[Image, int]:
    """Pool picture ``index``: a deterministic crop/scale/colour variant, and its JPEG quality."""
    rng = np.random.default_rng([POOL_VERSION, index])
    sources = source_images()
    src = sources[int(rng.integers(len(sources)))]
    h, w = src.shape[:2]
    area = rng.uniform(0.2, 1.0)
    ratio = math.exp(rng.uniform(math.log(0.6), math.log(1.9)))
    cw = int(min(w, max(32, round(math.sqrt(area * w * h * ratio)))))
    ch = int(min(h, max(32, round(math.sqrt(area * w * h / ratio)))))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    # Colour work on the crop (before any enlargement) and through lookup tables: cheap per pixel.
    img = _recolour(np.ascontiguousarray(img), rng)
    long_side = int(rng.integers(MIN_LONG_SIDE, MAX_LONG_SIDE + 1))
    scale = long_side / max(cw, ch)
    size = (max(16, round(cw * scale)), max(16, round(ch * scale)))
    img = np.asarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC), np.uint8)
    if rng.random() < 0.25:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0)), np.uint8)
    if rng.random() < 0.3:
        noise = np.empty(img.shape, dtype=np.int16)
        cv2.setRNGSeed(index)
        cv2.randn(noise, np.zeros(3), np.full(3, rng.uniform(2, 8)))
        img = np.asarray(cv2.add(img, noise, dtype=cv2.CV_8U), np.uint8)
    return np.ascontiguousarray(img, dtype=np.uint8), int(rng.integers(86, 95))


def _recolour(img: Image, rng: np.random.Generator) -> Image:
    """Hue shift, saturation change, per-channel gain, offset and gamma (colour variants of one picture)."""
    levels = np.arange(256, dtype=np.float32)
    hue_shift = rng.uniform(-60, 60) if rng.random() < 0.2 else rng.normal(0, 10)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hue_lut = np.where(levels < 180, (levels + hue_shift) % 180, levels)
    sat_lut = np.clip(levels * rng.uniform(0.5, 1.4) + rng.uniform(0, 30), 0, 255)
    hsv[..., 0] = cv2.LUT(hsv[..., 0], hue_lut.astype(np.uint8))
    hsv[..., 1] = cv2.LUT(hsv[..., 1], sat_lut.astype(np.uint8))
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    gamma = rng.uniform(0.75, 1.35)
    offset = rng.uniform(-20, 20)
    gains = rng.uniform(0.8, 1.2, size=3) * rng.uniform(0.75, 1.15)
    tables = [255.0 * (np.clip(levels * g + offset, 0, 255) / 255.0) ** gamma for g in gains]
    lut = np.stack(tables, axis=1).clip(0, 255).astype(np.uint8).reshape(256, 1, 3)
    return np.asarray(cv2.LUT(out, lut), dtype=np.uint8)


def _write_part(root: str, part: int) -> int:
    """Write the 1,000 JPEGs of one part folder; return the bytes written.

    Files go to a temporary name and are renamed; one sync before the part's marker
    (instead of an fsync per file) makes the marker trustworthy at a fraction of the cost.
    """
    cv2.setNumThreads(1)
    folder = Path(root) / f"part-{part:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for index in range(part * PART_SIZE, (part + 1) * PART_SIZE):
        path = folder / f"img-{index:07d}.jpg"
        if not path.exists():
            img, quality = variant(index)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError(f"cannot encode {path}")
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(buf.tobytes())
            os.replace(tmp, path)
        total += path.stat().st_size
    os.sync()
    atomic_write_json(folder / ".done.json", {"version": POOL_VERSION, "images": PART_SIZE, "bytes": total})
    return total


def _part_done(root: Path, part: int) -> bool:
    marker = root / f"part-{part:03d}" / ".done.json"
    try:
        return bool(json.loads(marker.read_text()).get("version") == POOL_VERSION)
    except (OSError, ValueError):
        return False


def ensure_parts(parts: int, jobs: int) -> Path:
    """Generate (or reuse) part folders 0..parts-1 of the cached pool; return the parts' root."""
    root = BENCH_ROOT / f"pool-v{POOL_VERSION}" / "parts"
    todo = [p for p in range(parts) if not _part_done(root, p)]
    if todo:
        print(f"[data] generating {len(todo) * PART_SIZE:,} JPEGs under {root} (cached for reruns)", flush=True)
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            list(ex.map(_write_part, [str(root)] * len(todo), todo))
    return root


def pool_dir(images: int, jobs: int) -> Path:
    """A folder holding exactly ``images`` pool JPEGs (links to the cached part folders)."""
    if images % PART_SIZE:
        raise ValueError(f"pool sizes are multiples of {PART_SIZE}, got {images}")
    parts = images // PART_SIZE
    root = ensure_parts(parts, jobs)
    pool = BENCH_ROOT / f"pool-v{POOL_VERSION}" / f"pool-{images}"
    pool.mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        link = pool / f"part-{part:03d}"
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(root / link.name, pool))
    return pool.absolute()


def _clip_frame(t: float, size: tuple[int, int], sources: tuple[Image, ...], shot_seconds: float) -> Image:
    """One frame of a pan-and-zoom over a source picture; a new shot every ``shot_seconds``."""
    w, h = size
    shot = int(t // shot_seconds)
    src = sources[(shot * 7) % len(sources)]
    phase = (t % shot_seconds) / shot_seconds
    sh, sw = src.shape[:2]
    zoom = 1.0 + 0.35 * phase
    cw = min(sw, sh * w / h) / zoom
    chh = cw * h / w
    cx = sw / 2 + (sw - cw) / 2 * 0.8 * math.sin(2 * math.pi * phase + shot)
    cy = sh / 2 + (sh - chh) / 2 * 0.5 * math.cos(2 * math.pi * phase)
    x0, y0 = max(0.0, min(sw - cw, cx - cw / 2)), max(0.0, min(sh - chh, cy - chh / 2))
    m = np.array([[w / cw, 0, -x0 * w / cw], [0, h / chh, -y0 * h / chh]], dtype=np.float64)
    return np.asarray(cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR), dtype=np.uint8)


def ensure_clip(seconds: float = 8.0, fps: int = 25, size: tuple[int, int] = (1280, 720)) -> Path:
    """A cached H.264 (yuv420p) MP4 with a 440 Hz AAC tone: the render benchmark's input."""
    path = BENCH_ROOT / f"clip-{size[0]}x{size[1]}-{fps}fps-{seconds:g}s-v{POOL_VERSION}.mp4"
    if path.exists():
        return path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    sources = tuple(s for s in source_images() if min(s.shape[:2]) >= 300)
    rate = 48000
    with av.open(str(tmp), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "20", "preset": "veryfast"}
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        frames = int(seconds * fps)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_clip_frame(i / fps, size, sources, 2.0), format="bgr24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        chunk = 1024
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, tone.size, chunk):
            samples = tone[None, start : start + chunk]
            aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            aframe.sample_rate = rate
            aframe.pts = start
            aframe.time_base = Fraction(1, rate)
            out.mux(audio.encode(aframe))
        out.mux(audio.encode(None))
    os.replace(tmp, path)
    return path.absolute()
