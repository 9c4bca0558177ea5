"""Read an image file once and decode it from memory into a uint8 BGR array, small.

One function chain serves pool images (ff-index) and matched images (ff-render):
read_image_bytes -> decode_image (header check, bomb guard, JPEG DCT scaling,
EXIF orientation, colour normalisation) -> prepare_image (centre crop + resize).

Files are never opened by OpenCV (cv2.imread on a non-UTF-8 file name segfaults
OpenCV 5.0); everything is decoded from bytes. JPEG goes through simplejpeg (a pip
wheel bundling libjpeg-turbo: no system library to install) with DCT scaling 1/8, 1/4,
1/2, 1, otherwise through cv2.imdecode with IMREAD_REDUCED_COLOR_2/4/8; other formats
through cv2.imdecode.
"""

from __future__ import annotations

import functools
import io
import math
import os
import stat
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, cast

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.errors import ImageDecodeError, UsageError
from shared.image_header import ImageHeader, probe_dimensions, read_header, sniff_format

__all__ = [
    "BACKGROUND_GREY",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "Backend",
    "ImageHeader",
    "center_crop_box",
    "center_crop_to_aspect",
    "decode_image",
    "load_prepared",
    "prepare_image",
    "probe_dimensions",
    "read_header",
    "read_image_bytes",
    "resize_smoothly",
    "simplejpeg_available",
    "sniff_format",
]

DEFAULT_MAX_PIXELS: int = 100_000_000  # declared width*height above which a file is refused undecoded
# Bytes above which a file is refused unread (its bytes are held whole in memory): no photo needs
# more; an uncompressed 8-bit RGB TIFF that large would hold 89 megapixels.
DEFAULT_MAX_FILE_BYTES: int = 256 << 20
MIN_SIDE = 8  # smaller images carry no usable structure (icons, tracking pixels)
BACKGROUND_GREY = 128  # transparent pixels become mid-grey: neutral for edges and colour alike

Backend = Literal["auto", "simplejpeg", "opencv"]
Image = NDArray[np.uint8]

# The scales OpenCV's libjpeg can decode at, smallest first, and the flag that asks for each.
_OPENCV_SCALES = {
    (1, 8): cv2.IMREAD_REDUCED_COLOR_8,
    (1, 4): cv2.IMREAD_REDUCED_COLOR_4,
    (1, 2): cv2.IMREAD_REDUCED_COLOR_2,
    (1, 1): cv2.IMREAD_COLOR,
}


# libjpeg-turbo also decodes at 3/8, 5/8, 3/4 and 7/8, but those scaled IDCTs have no SIMD code:
# measured here, each is slower than the next power-of-two scale even counting the larger
# resize afterwards (1280x720 -> 384x216: 3/8 3.0 ms, 1/2 2.9 ms; -> 640x360: 5/8 4.6 ms,
# 1/1 2.9 ms). Using the same scales as OpenCV also makes both backends decode alike.
_FAST_FACTORS = ((1, 8), (1, 4), (1, 2), (1, 1))


@functools.cache
def _simplejpeg() -> ModuleType | None:
    """The simplejpeg module, or None where its wheel is missing (OpenCV then decodes every JPEG)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    module: ModuleType = simplejpeg
    return module


def simplejpeg_available() -> bool:
    """True when simplejpeg (libjpeg-turbo with DCT scaling, from its pip wheel) imports."""
    return _simplejpeg() is not None


def _display(path: Path) -> str:
    # A file name that is not valid UTF-8 must still print on one line without raising.
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def read_image_bytes(path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The whole file, read once. Raises ImageDecodeError: vanished, unreadable, empty or too_large.

    A file over ``max_bytes`` is refused unread: the bytes are held in memory whole, so an
    oversized file (a sparse one costs no disk) must not cost its size in RAM per worker.
    """
    try:
        # O_NONBLOCK: a FIFO in the pool must be refused, not wait forever for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ImageDecodeError("vanished", f"{_display(path)}: file no longer exists") from None
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"{_display(path)}: {exc.strerror or exc}") from None
    try:
        with open(fd, "rb", buffering=0) as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ImageDecodeError("unreadable", f"{_display(path)}: not a regular file")
            data = _read_bounded(handle, info.st_size, max_bytes, path)
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"{_display(path)}: {exc.strerror or exc}") from None
    if not data:
        raise ImageDecodeError("empty", f"{_display(path)}: file is empty (0 bytes)")
    return data


def _read_bounded(handle: io.FileIO, size: int, max_bytes: int, path: Path) -> bytes:
    """At most ``max_bytes`` (a file that grows, or lies about its size, stops there)."""
    too_large = ImageDecodeError("too_large", f"{_display(path)}: file is over {max_bytes:,} bytes")
    if size > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    total = 0
    request = size + 1  # one read() takes a regular file whole; the extra byte sees its end
    while block := handle.read(min(request, max_bytes + 1 - total)):
        chunks.append(block)
        total += len(block)
        if total > max_bytes:
            raise too_large
        request = 1 << 16
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def center_crop_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the largest centred box of ``aspect`` = w/h inside width x height."""
    if not (math.isfinite(aspect) and aspect > 0):
        raise ValueError(f"aspect must be a positive number, got {aspect}")
    if width > height * aspect:
        w, h = max(1, min(width, round(height * aspect))), height
    else:
        w, h = width, max(1, min(height, round(width / aspect)))
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop_to_aspect(image: Image, aspect: float) -> Image:
    """A view of the centred crop with the given width/height ratio (never padded)."""
    x, y, w, h = center_crop_box(image.shape[1], image.shape[0], aspect)
    return image[y : y + h, x : x + w]


def prepare_image(image: Image, size: tuple[int, int]) -> Image:
    """Centre-crop to size's aspect and resize to exactly size = (w, h); contiguous uint8 BGR."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {w}x{h}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")
    crop = center_crop_to_aspect(image, w / h)
    crop_h, crop_w = crop.shape[:2]
    if (crop_w, crop_h) == (w, h):
        return np.ascontiguousarray(crop)
    return resize_smoothly(crop, (w, h))


# Shrink factor up to which bilinear sees every source pixel: each output pixel then spans at
# most two source pixels per axis, which are bilinear's two taps (at exactly 2 it is their mean).
BILINEAR_MAX_SHRINK = 2


def resize_smoothly(image: Image, size: tuple[int, int]) -> Image:
    """Resize to exactly size = (w, h) without aliasing, as INTER_AREA would, at a fraction of its cost.

    INTER_AREA at a non-integer factor costs 4-5x bilinear (0.67 vs 0.13 ms for the 1-2x
    shrink to 256x144 after DCT scaling, measured on the bench pool: a fifth of a build's
    worker time). So: bilinear up to a 2x shrink (and when enlarging, where INTER_AREA
    degenerates to nearest-neighbour blocks). A larger shrink first takes INTER_AREA's fast
    path, the exact mean of j x j blocks with j = ceil(factor / 2), so that bilinear is left
    at most 2x; to make j divide the sides, up to j - 1 edge pixels are cropped, centred
    (under 1/64 of the side for a 32 px atlas tile, less for larger sizes).
    """
    w, h = size
    factor = min(image.shape[1] / w, image.shape[0] / h)
    if factor > BILINEAR_MAX_SHRINK:
        j = math.ceil(factor / BILINEAR_MAX_SHRINK)
        ih, iw = image.shape[:2]
        y, x = (ih % j) // 2, (iw % j) // 2
        blocks = image[y : y + ih - ih % j, x : x + iw - iw % j]
        image = cast(Image, cv2.resize(blocks, (iw // j, ih // j), interpolation=cv2.INTER_AREA))
    return cast(Image, cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR))


def decode_image(
    data: bytes,
    *,
    min_size: tuple[int, int] = (0, 0),
    aspect: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: Backend = "auto",
) -> Image:
    """Decode image bytes into H x W x 3 uint8 BGR, upright (EXIF orientation applied).

    A JPEG is decoded at the smallest DCT scale whose centre crop to ``aspect`` (the whole
    image when None) is still at least ``min_size`` = (w, h) in both dimensions; the
    default (0, 0) decodes at full size. The returned image is not cropped.
    ``backend`` picks the JPEG decoder: "auto" (simplejpeg when installed), "simplejpeg", "opencv".

    Raises ImageDecodeError with reason empty, not_an_image, truncated, too_large,
    too_small or unsupported.
    """
    header = _checked_header(data, max_pixels)
    return _decode(data, header, min_size, aspect, backend)


def load_prepared(
    path: Path,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: Backend = "auto",
) -> tuple[Image, tuple[int, int]]:
    """Read, decode at the smallest sufficient scale and prepare to ``size``.

    Returns (prepared image, (width, height) of the original after EXIF orientation).
    """
    data = read_image_bytes(path)
    header = _checked_header(data, max_pixels)
    image = _decode(data, header, size, size[0] / size[1], backend)
    return prepare_image(image, size), header.display_size


def _checked_header(data: bytes, max_pixels: int) -> ImageHeader:
    """The header, once it is known that decoding it is safe and worthwhile."""
    if not data:
        raise ImageDecodeError("empty", "no bytes to decode")
    header = read_header(data)
    width, height = header.display_size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "too_large", f"{header.format} declares {width}x{height} pixels, limit is {max_pixels:,}"
        )
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError("too_small", f"{width}x{height} pixels, need at least {MIN_SIDE} on each side")
    if not header.complete:
        raise ImageDecodeError("truncated", f"{header.format} data ends before its end marker")
    return header


def _decode(
    data: bytes, header: ImageHeader, min_size: tuple[int, int], aspect: float | None, backend: Backend
) -> Image:
    if backend not in ("auto", "simplejpeg", "opencv"):
        raise UsageError(f"unknown image backend {backend!r}; choose auto, simplejpeg or opencv")
    if header.format == "jpeg":
        return _decode_jpeg(data, header, min_size, aspect, backend)
    try:
        decoded = _imdecode(data, cv2.IMREAD_UNCHANGED)
    except ImageDecodeError:
        # A GIF has no size to check up front, but it must end with its trailer byte.
        if header.format == "gif" and not data.endswith(b";"):
            raise ImageDecodeError("truncated", "gif data ends before its trailer") from None
        raise
    image = _normalise(decoded, header)
    # OpenCV's TIFF decoder applies the orientation tag itself, whatever the flags.
    return image if header.format == "tiff" else _orient(image, header.orientation)


def _decode_jpeg(
    data: bytes, header: ImageHeader, min_size: tuple[int, int], aspect: float | None, backend: Backend
) -> Image:
    simplejpeg = _simplejpeg()
    jpeg_error = ""
    if backend == "simplejpeg" and simplejpeg is None:
        raise UsageError("the simplejpeg backend was requested but simplejpeg is not installed")
    if backend != "opencv" and simplejpeg is not None:
        decoded, jpeg_error = _decode_jpeg_simplejpeg(simplejpeg, data, header, min_size, aspect)
        if decoded is not None:
            return _orient(decoded, header.orientation)
    scale = _pick_scale(header.display_size, tuple(_OPENCV_SCALES), min_size, aspect)
    try:
        image = _imdecode(data, _OPENCV_SCALES[scale] | cv2.IMREAD_IGNORE_ORIENTATION)
    except ImageDecodeError:
        if jpeg_error:
            raise ImageDecodeError("unsupported", f"jpeg: {jpeg_error}") from None
        raise
    return _orient(_normalise(image, header), header.orientation)


def _pick_scale(
    display_size: tuple[int, int],
    factors: tuple[tuple[int, int], ...],
    min_size: tuple[int, int],
    aspect: float | None,
) -> tuple[int, int]:
    """(num, den): the smallest factor whose scaled (then aspect-cropped) size covers min_size."""
    min_w, min_h = min_size
    if min_w <= 0 and min_h <= 0:
        return 1, 1
    width, height = display_size
    for num, den in factors:
        # libjpeg rounds scaled sizes up (jdiv_round_up); orientation only swaps the axes.
        scaled_w, scaled_h = -(-width * num // den), -(-height * num // den)
        if aspect is None:
            crop_w, crop_h = scaled_w, scaled_h
        else:
            _, _, crop_w, crop_h = center_crop_box(scaled_w, scaled_h, aspect)
        if crop_w >= min_w and crop_h >= min_h:
            return num, den
    return 1, 1


def _decode_jpeg_simplejpeg(
    simplejpeg: ModuleType, data: bytes, header: ImageHeader, min_size: tuple[int, int], aspect: float | None
) -> tuple[Image | None, str]:
    """(image, "") or (None, libjpeg-turbo's error) so that OpenCV can try instead."""
    num, den = _pick_scale(header.display_size, _FAST_FACTORS, min_size, aspect)
    # simplejpeg picks the smallest of all libjpeg-turbo scales whose output covers the size asked
    # for; asking for exactly the (rounded-up) size at num/den pins that fast scale.
    options = {
        "colorspace": "CMYK" if header.cmyk else "BGR",
        "min_width": -(-header.width * num // den),
        "min_height": -(-header.height * num // den),
    }
    try:
        # strict: libjpeg warnings raise instead of returning a partly decoded picture.
        image: Image = simplejpeg.decode_jpeg(data, strict=True, **options)
    except ValueError as exc:
        message = str(exc)
        # "Premature end of JPEG file", "Corrupt JPEG data: premature end of data segment".
        if "premature end" in message.lower():
            raise ImageDecodeError("truncated", f"jpeg: {message}") from None
        # Other warnings (extraneous bytes before a marker, ...) are common and harmless.
        try:
            image = simplejpeg.decode_jpeg(data, strict=False, **options)
        except ValueError as fatal:
            return None, str(fatal)
    if header.cmyk:
        return _cmyk_to_bgr(image, header.cmyk_inverted), ""
    return image, ""


def _cmyk_to_bgr(cmyk: Image, inverted: bool) -> Image:
    """Naive CMYK -> BGR (no ICC profile): R = (1-C)(1-K), as Photoshop-free decoders do.

    Adobe-marked files (nearly all CMYK JPEGs) store 255 - value; OpenCV's own
    conversion assumes that as well, so both backends agree on such files.
    """
    values = cmyk.astype(np.uint16)
    if not inverted:
        values = 255 - values
    rgb = (values[..., :3] * values[..., 3:4] + 127) // 255
    return np.ascontiguousarray(rgb[..., ::-1], dtype=np.uint8)


def _imdecode(data: bytes, flags: int) -> NDArray[Any]:
    try:
        image: NDArray[Any] | None = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as exc:
        raise ImageDecodeError("unsupported", f"OpenCV cannot decode it: {str(exc).strip().splitlines()[-1]}") from None
    if image is None or image.size == 0:
        raise ImageDecodeError("unsupported", "OpenCV cannot decode it")
    return image


def _normalise(image: NDArray[Any], header: ImageHeader) -> Image:
    """Any OpenCV decode result -> H x W x 3 uint8 BGR: 16-bit scaled, grey expanded, alpha flattened."""
    if image.dtype == np.uint16:
        # Scale (round(v / 257)), never clip: 65535 -> 255, 32896 -> 128.
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError("unsupported", f"{header.format} with {image.dtype} samples")
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 2:
        image = _composite(image[:, :, :1], image[:, :, 1])
    elif channels == 4:
        image = _composite(image[:, :, :3], image[:, :, 3])
    elif channels not in (1, 3):
        raise ImageDecodeError("unsupported", f"{header.format} with {channels} channels")
    if image.shape[2] == 1:
        return cast(Image, cv2.cvtColor(image, cv2.COLOR_GRAY2BGR))
    return image


def _composite(colour: Image, alpha: Image) -> Image:
    """Alpha-blend over a fixed mid-grey, so transparent pixels never show the encoder's leftovers."""
    if int(alpha.min()) == 255:
        return np.ascontiguousarray(colour)
    a = alpha[:, :, None].astype(np.uint16)
    blended = (colour.astype(np.uint16) * a + BACKGROUND_GREY * (255 - a) + 127) // 255
    return blended.astype(np.uint8)


def _orient(image: Image, orientation: int) -> Image:
    """Apply EXIF orientation 1..8 (stored -> upright), as Pillow's ImageOps.exif_transpose does."""
    if orientation == 1:
        return image
    transposed = image.transpose(1, 0, 2)
    if orientation == 2:  # mirrored left-right
        oriented = image[:, ::-1]
    elif orientation == 3:  # rotated 180
        oriented = image[::-1, ::-1]
    elif orientation == 4:  # mirrored top-bottom
        oriented = image[::-1]
    elif orientation == 5:  # mirrored along the main diagonal
        oriented = transposed
    elif orientation == 6:  # needs a 90 degree clockwise turn
        oriented = transposed[:, ::-1]
    elif orientation == 7:  # mirrored along the anti-diagonal
        oriented = transposed[::-1, ::-1]
    else:  # 8: needs a 90 degree counter-clockwise turn
        oriented = transposed[::-1]
    return np.ascontiguousarray(oriented)
