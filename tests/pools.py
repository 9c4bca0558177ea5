"""Real-content test pools: photos that ship with scikit-image and scikit-learn, their crops and variants.

Nothing is downloaded: only pictures bundled inside the installed packages are used.
``make_pool`` writes distinct JPEGs (different crops, zooms, flips and hues of those
pictures, up to 1280 px); ``degrade`` makes the altered copies a retrieval test looks up.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import skimage.data
from numpy.typing import NDArray

from shared.tiles import DEFAULT_TILE_SIZE, atlas_tile

Image = NDArray[np.uint8]

# Colour photographs bundled with scikit-image 0.26 (the others need a pooch download).
SKIMAGE_COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
# Bundled greyscale photographs; they join the pool toned (sepia, cyanotype, ...), as old prints are.
SKIMAGE_GREY = ("camera", "coins", "moon", "brick", "grass", "gravel", "clock", "cell")
SKLEARN_IMAGES = ("china.jpg", "flower.jpg")
DEGRADATIONS = ("recompress", "blur", "brighten", "noise", "shift")
POOL_JPEG_QUALITY = 92
RECOMPRESS_QUALITY = 40

# Tones for the greyscale pictures, BGR multipliers of the grey level (dark stays dark).
_TONES = (
    (0.70, 0.86, 1.00),  # sepia
    (1.00, 0.88, 0.62),  # cyanotype
    (0.80, 1.00, 0.78),  # green
    (0.92, 0.75, 1.00),  # violet
)


def _bgr(rgb: NDArray[np.uint8]) -> Image:
    return np.ascontiguousarray(rgb[:, :, 2::-1])


def _over_white(rgba: NDArray[np.uint8]) -> Image:
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    rgb = (rgba[:, :, :3].astype(np.uint16) * alpha + 255 * (255 - alpha) + 127) // 255
    return _bgr(rgb.astype(np.uint8))


def _sklearn_sample_images() -> list[Image]:
    """scikit-learn's two sample photos (china, flower), read from its package folder.

    Read as files rather than through sklearn.datasets, whose import costs ~2 s per process.
    """
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.origin is not None, "scikit-learn (the dev extra) is not installed"
    folder = Path(spec.origin).parent / "datasets" / "images"
    return [decode_bytes((folder / name).read_bytes()) for name in SKLEARN_IMAGES]


@functools.lru_cache(maxsize=1)
def _loaded() -> tuple[Image, ...]:
    images = [_bgr(np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)) for name in SKIMAGE_COLOUR]
    images.append(_over_white(np.asarray(getattr(skimage.data, "logo")(), dtype=np.uint8)))  # noqa: B009
    images.append(_bgr(np.asarray(getattr(skimage.data, "colorwheel")(), dtype=np.uint8)))  # noqa: B009
    images.extend(_sklearn_sample_images())
    for i, name in enumerate(SKIMAGE_GREY):
        grey = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        toned = np.clip(grey[:, :, None] * np.array(_TONES[i % len(_TONES)], dtype=np.float32), 0, 255)
        images.append(np.ascontiguousarray(toned.round().astype(np.uint8)))
    for image in images:
        image.setflags(write=False)
    return tuple(images)


def real_images() -> list[Image]:
    """Every bundled real picture as H x W x 3 uint8 BGR (fresh, writable copies), colour ones first."""
    return [image.copy() for image in _loaded()]


def colour_images() -> list[Image]:
    """The colour photographs only (no toned greyscale)."""
    return real_images()[: len(SKIMAGE_COLOUR) + 4]


@dataclass(frozen=True)
class Variant:
    """How one pool picture is cut from a source picture."""

    source: int
    scale: float  # fraction of the largest box of ``aspect`` that fits in the source
    anchor: tuple[float, float]  # where that box sits: (0, 0) top-left .. (1, 1) bottom-right
    aspect: float  # width / height of the picture
    flip: bool
    hue_shift: int  # OpenCV hue units (0..179)
    long_side: int


# The first variants of every source are laid out to share little content with each other.
_LAYOUTS = (
    (1.00, (0.5, 0.5)),
    (0.55, (0.0, 0.0)),
    (0.55, (1.0, 1.0)),
    (0.55, (1.0, 0.0)),
    (0.55, (0.0, 1.0)),
    (0.40, (0.5, 0.5)),
)
_ASPECTS = (16 / 9, 4 / 3, 3 / 2, 1.0, 16 / 9, 3 / 4)


def pool_variants(n: int, seed: int = 0, *, max_side: int = 1280, min_side: int = 320) -> list[Variant]:
    """``n`` variants, cycling through the sources; the first ``6 * sources`` are mutually distinct."""
    rng = np.random.default_rng(seed)
    sources = len(_loaded())
    out = []
    for i in range(n):
        round_, source = divmod(i, sources)
        if round_ < len(_LAYOUTS):
            scale, anchor = _LAYOUTS[round_]
            anchor = (
                float(np.clip(anchor[0] + rng.uniform(-0.05, 0.05), 0, 1)),
                float(np.clip(anchor[1] + rng.uniform(-0.05, 0.05), 0, 1)),
            )
        else:
            scale, anchor = float(rng.uniform(0.35, 0.9)), (float(rng.uniform()), float(rng.uniform()))
        out.append(
            Variant(
                source=source,
                scale=scale,
                anchor=anchor,
                aspect=_ASPECTS[(round_ + source) % len(_ASPECTS)],
                flip=bool((round_ + source) % 3 == 1),
                hue_shift=int(rng.integers(20, 160)) if (round_ + source) % 4 == 2 else 0,
                long_side=int(rng.integers(min_side, max_side + 1)),
            )
        )
    return out


def hue_shift(image: Image, shift: int) -> Image:
    """The picture with every hue turned by ``shift`` (OpenCV units, 180 = a full turn)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + shift) % 180).astype(np.uint8)
    return cast(Image, cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR))


def render_variant(variant: Variant) -> Image:
    source = _loaded()[variant.source]
    h, w = source.shape[:2]
    box_w, box_h = (w, round(w / variant.aspect)) if w / h < variant.aspect else (round(h * variant.aspect), h)
    box_w, box_h = max(16, round(box_w * variant.scale)), max(16, round(box_h * variant.scale))
    x = round((w - box_w) * variant.anchor[0])
    y = round((h - box_h) * variant.anchor[1])
    crop = source[y : y + box_h, x : x + box_w]
    if variant.flip:
        crop = crop[:, ::-1]
    out_w, out_h = (
        (variant.long_side, round(variant.long_side / variant.aspect))
        if variant.aspect >= 1
        else (round(variant.long_side * variant.aspect), variant.long_side)
    )
    interpolation = cv2.INTER_AREA if out_w < box_w else cv2.INTER_CUBIC
    image = cast(Image, cv2.resize(np.ascontiguousarray(crop), (out_w, out_h), interpolation=interpolation))
    if variant.hue_shift:
        image = hue_shift(image, variant.hue_shift)
    return np.ascontiguousarray(image)


def pool_images(n: int, seed: int = 0, *, max_side: int = 1280, min_side: int = 320) -> list[Image]:
    """The pictures ``make_pool`` would write, in memory (before JPEG compression)."""
    return [render_variant(v) for v in pool_variants(n, seed, max_side=max_side, min_side=min_side)]


def encode_jpeg(image: Image, quality: int = POOL_JPEG_QUALITY) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok, "OpenCV could not encode a JPEG"
    return bytes(buffer.tobytes())


def encode_png(image: Image) -> bytes:
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok, "OpenCV could not encode a PNG"
    return bytes(buffer.tobytes())


def encode_bmp(image: Image) -> bytes:
    """Lossless and uncompressed: the cheapest file bytes that hold exactly these pixels."""
    ok, buffer = cv2.imencode(".bmp", image)
    assert ok, "OpenCV could not encode a BMP"
    return bytes(buffer.tobytes())


def decode_bytes(data: bytes) -> Image:
    """Plain full-size OpenCV decode, for checking what a test wrote (not the code under test)."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "OpenCV could not decode the test's own bytes"
    return cast(Image, image)


def write_jpeg(path: Path, image: Image, quality: int = POOL_JPEG_QUALITY) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image, quality))
    return path


def make_pool(
    folder: Path, n: int, seed: int = 0, *, max_side: int = 1280, min_side: int = 320, nested: bool = False
) -> list[Path]:
    """Write ``n`` distinct real-content JPEGs into ``folder``; return their paths in sorted order.

    Files are named ``img-00000.jpg`` ... in variant order, so sorted paths are pool order
    (``nested`` spreads them over sub-folders ``d0/ .. d3/`` and sorted order changes accordingly).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, variant in enumerate(pool_variants(n, seed, max_side=max_side, min_side=min_side)):
        rel = f"d{i % 4}/img-{i:05d}.jpg" if nested else f"img-{i:05d}.jpg"
        paths.append(write_jpeg(folder / rel, render_variant(variant)))
    return sorted(paths)


def degrade(image: Image, kind: str, rng: np.random.Generator) -> Image:
    """A copy of ``image`` altered the way re-uploads and video frames alter pictures.

    recompress: JPEG at quality 40; blur: Gaussian, sigma ~1/400 of the long side (>= 1 px);
    brighten: x1.15 + 20 levels; noise: Gaussian, sigma 8 levels; shift: the view moved by
    3-5 % of width and height (crop on one side, scaled back to the same size).
    """
    h, w = image.shape[:2]
    if kind == "recompress":
        return decode_bytes(encode_jpeg(image, RECOMPRESS_QUALITY))
    if kind == "blur":
        sigma = max(1.0, max(h, w) / 400)
        return cast(Image, cv2.GaussianBlur(image, (0, 0), sigmaX=sigma))
    if kind == "brighten":
        return np.asarray(np.clip(image.astype(np.float32) * 1.15 + 20, 0, 255).round(), dtype=np.uint8)
    if kind == "noise":
        noisy = image.astype(np.float32) + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(8.0)
        return np.clip(noisy, 0, 255).round().astype(np.uint8)
    if kind == "shift":
        dx, dy = round(w * rng.uniform(0.03, 0.05)), round(h * rng.uniform(0.03, 0.05))
        x0 = dx if rng.random() < 0.5 else 0
        y0 = dy if rng.random() < 0.5 else 0
        moved = np.ascontiguousarray(image[y0 : y0 + h - dy, x0 : x0 + w - dx])
        return cast(Image, cv2.resize(moved, (w, h), interpolation=cv2.INTER_LINEAR))
    raise ValueError(f"unknown degradation {kind!r}; choose one of {', '.join(DEGRADATIONS)}")


def degraded_bytes(image: Image, kind: str, rng: np.random.Generator) -> bytes:
    """The degraded copy as a file would hold it: JPEG q=40 for recompress, lossless BMP otherwise."""
    if kind == "recompress":
        return encode_jpeg(image, RECOMPRESS_QUALITY)
    return encode_bmp(degrade(image, kind, rng))


def copy_tree(source: Path, dest: Path) -> Path:
    """A private copy of a pool or bundle folder that a test may change (mtimes kept)."""
    shutil.copytree(source, dest, copy_function=shutil.copy2)
    return dest


def crop_tiles(n: int, seed: int = 0, size: int = DEFAULT_TILE_SIZE) -> NDArray[np.uint8]:
    """``n`` atlas tiles cut at random places and scales from the package photos."""
    rng = np.random.default_rng(seed)
    images = real_images()
    tiles = []
    for _ in range(n):
        image = images[int(rng.integers(len(images)))]
        h, w = image.shape[:2]
        side = int(rng.integers(24, min(h, w) // 2))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        tiles.append(atlas_tile(image[y : y + side, x : x + side], size))
    return np.stack(tiles)
