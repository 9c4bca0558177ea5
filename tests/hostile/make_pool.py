"""A hostile image pool, written by code into a folder: every kind of file a scraped pool holds.

Each file is a :class:`Case` with the one outcome ff-index must give it: ``indexed``,
``skipped`` (hidden: listed nowhere), or the reason it is rejected with in
rejected.parquet (see shared/errors.py ImageDecodeError and fluxframe_index/scan.py).
Pictures come from scikit-image's bundled photos; nothing binary is checked in.

Usage: python -m tests.hostile.make_pool DIR   (writes the pool and prints the table)
"""

from __future__ import annotations

import functools
import io
import os
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from numpy.typing import NDArray
from PIL import Image

INDEXED = "indexed"
SKIPPED = "skipped"  # hidden files and folders: silently passed over, in neither table
# The file that is deleted after scan_pool() listed it and before its chunk is decoded.
VANISHING = "zzz-vanishes-after-scan.jpg"
# A file far over the size limit on bytes: it costs no disk (sparse), it must cost no memory either.
HUGE = "huge-sparse.jpg"
HUGE_BYTES = 1 << 30
# Upright size of the ordinary pictures (small: the whole pool decodes in well under a second).
PICTURE_SIZE = (240, 160)
EXIF_ORIENTATION_TAG = 0x0112
# Pillow transpose that turns the upright picture into what a camera stores with each orientation.
STORED_FOR = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Case:
    raw: bytes  # path relative to the pool root, as the file system's bytes
    outcome: str  # INDEXED, SKIPPED or the rejection reason
    what: str  # one line for the README table
    size: tuple[int, int] | None = None  # (width, height) images.parquet must show, upright
    folder_rejected: bool = False  # a rejection names the unreadable folder, not the file in it

    @property
    def path(self) -> str:
        """The path as images.parquet / rejected.parquet show it (undecodable bytes as U+FFFD)."""
        return self.raw.decode("utf-8", errors="replace")

    @property
    def fs_path(self) -> str:
        return os.fsdecode(self.raw)

    @property
    def rejected_path(self) -> str:
        """The path its rejection is recorded under."""
        return self.path.rsplit("/", 1)[0] if self.folder_rejected else self.path


# --- picture bytes -----------------------------------------------------------------------------


def _rgb(name: str, size: tuple[int, int] = PICTURE_SIZE) -> NDArray[np.uint8]:
    picture = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
    resized = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(resized, dtype=np.uint8)


def upright() -> Image.Image:
    """The picture every EXIF-orientation case shows once turned upright."""
    return Image.fromarray(_rgb("chelsea"))


def _pil(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _cv(ext: str, image: NDArray[np.uint8] | NDArray[np.uint16]) -> bytes:
    ok, encoded = cv2.imencode(ext, image)
    assert ok, f"OpenCV could not encode {ext}"
    return bytes(encoded.tobytes())


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def jpeg(name: str = "coffee") -> bytes:
    return _pil(Image.fromarray(_rgb(name)), "JPEG", quality=90)


def png(name: str = "rocket") -> bytes:
    return _pil(Image.fromarray(_rgb(name)), "PNG")


def exif_jpeg(orientation: int) -> bytes:
    stored = upright() if orientation == 1 else upright().transpose(STORED_FOR[orientation])
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    return _pil(stored, "JPEG", quality=92, exif=exif)


def tiff() -> bytes:
    return _pil(Image.fromarray(_rgb("astronaut")), "TIFF", compression="tiff_lzw")


def png16() -> bytes:
    deep = _rgb("astronaut")[:, :, ::-1].astype(np.uint16) * 257
    return _cv(".png", deep)


def grey_jpeg() -> bytes:
    return _cv(".jpg", _rgb("camera"))


def rgba_png() -> bytes:
    rgba = np.dstack(
        [_rgb("coffee"), np.linspace(0, 255, PICTURE_SIZE[0], dtype=np.uint8)[None, :].repeat(PICTURE_SIZE[1], 0)]
    )
    return _pil(Image.fromarray(rgba, "RGBA"), "PNG")


def cmyk_jpeg() -> bytes:
    return _pil(Image.fromarray(_rgb("astronaut")).convert("CMYK"), "JPEG", quality=90)


def bomb_png(side: int = 100_000) -> bytes:
    """A PNG that declares side x side pixels (30 GB as BGR) in a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def bomb_jpeg(side: int = 60_000) -> bytes:
    """A small real JPEG whose frame header is patched to declare side x side pixels."""
    payload = bytearray(_pil(Image.fromarray(_rgb("coffee", (64, 64))), "JPEG"))
    sof = payload.index(b"\xff\xc0")
    struct.pack_into(">HH", payload, sof + 5, side, side)
    return bytes(payload)


def bomb_gif() -> bytes:
    """A GIF whose logical screen is patched to 65535 x 65535."""
    payload = bytearray(_pil(Image.fromarray(_rgb("coffee", (64, 64))), "GIF"))
    struct.pack_into("<HH", payload, 6, 65535, 65535)
    return bytes(payload)


def bomb_webp() -> bytes:
    """An extended (VP8X) WebP whose canvas is patched to 16384 x 16384."""
    rgba = Image.fromarray(_rgb("coffee", (64, 64))).convert("RGBA")
    rgba.putalpha(128)  # an alpha channel is what makes Pillow write the extended header
    payload = bytearray(_pil(rgba, "WEBP", quality=80))
    assert payload[12:16] == b"VP8X", "Pillow wrote a simple WebP; the bomb needs the extended header"
    payload[24:27] = (16384 - 1).to_bytes(3, "little")
    payload[27:30] = (16384 - 1).to_bytes(3, "little")
    return bytes(payload)


def bad_crc_png() -> bytes:
    data = bytearray(png("coffee"))
    idat = data.index(b"IDAT")
    data[idat + 40] ^= 0xFF  # inside the compressed data: the chunk CRC no longer matches
    return bytes(data)


BOMBS: dict[str, Callable[[], bytes]] = {
    "bomb-100000x100000.png": bomb_png,
    "bomb-60000x60000.jpg": bomb_jpeg,
    "bomb-65535x65535.gif": bomb_gif,
    "bomb-16384x16384.webp": bomb_webp,
}


# --- the pool ------------------------------------------------------------------------------------


def _files() -> list[tuple[Case, Callable[[], bytes]]]:
    """Every regular file of the pool with the function that makes its content."""
    w, h = PICTURE_SIZE

    def half(make: Callable[[], bytes]) -> Callable[[], bytes]:
        return lambda: make()[: len(make()) // 2]

    def const(data: bytes) -> Callable[[], bytes]:
        return lambda: data

    return [
        (Case(b"plain.jpg", INDEXED, "ordinary JPEG", (w, h)), jpeg),
        (Case(b"plain.png", INDEXED, "ordinary PNG", (w, h)), png),
        (Case(b"UPPER.JPEG", INDEXED, "upper-case extension", (w, h)), lambda: jpeg("astronaut")),
        (
            Case(b"png-named.jpg", INDEXED, "PNG bytes behind a .jpg name (format sniffed)", (w, h)),
            lambda: png("retina"),
        ),
        (Case(b"zero-bytes.jpg", "empty", "zero-byte file"), const(b"")),
        (Case(b"truncated-half.jpg", "truncated", "JPEG cut at half its length"), half(jpeg)),
        (Case(b"truncated-header.jpg", "truncated", "JPEG cut inside its headers (200 bytes)"), lambda: jpeg()[:200]),
        (Case(b"truncated-half.png", "truncated", "PNG cut at half its length"), half(png)),
        (Case(b"bad-crc.png", "unsupported", "PNG with a damaged IDAT (CRC mismatch)"), bad_crc_png),
        (
            Case(b"text.jpg", "not_an_image", "text file with a .jpg name"),
            const(b"holiday notes, not a picture\n" * 40),
        ),
        (Case(b"html.png", "not_an_image", "HTML error page saved as .png"), const(b"<html><body>404</body></html>\n")),
        (
            Case(b"one-pixel.png", "too_small", "1x1 PNG (tracking pixel)"),
            lambda: _pil(Image.new("RGB", (1, 1)), "PNG"),
        ),
        (Case(b"two-pixels.png", "too_small", "2x2 PNG"), lambda: _pil(Image.new("RGB", (2, 2), (9, 99, 199)), "PNG")),
        (Case(b"sixteen-bit.png", INDEXED, "16-bit RGB PNG", (w, h)), png16),
        (Case(b"grey.jpg", INDEXED, "greyscale JPEG", (w, h)), grey_jpeg),
        (Case(b"rgba.png", INDEXED, "RGBA PNG with a transparency ramp", (w, h)), rgba_png),
        (Case(b"cmyk.jpg", INDEXED, "CMYK JPEG (Adobe, inverted)", (w, h)), cmyk_jpeg),
        (
            Case(b"exif-1-upright.jpg", INDEXED, "EXIF orientation 1: the upright reference", (w, h)),
            lambda: exif_jpeg(1),
        ),
        *[
            (Case(f"exif-{k}.jpg".encode(), INDEXED, f"EXIF orientation {k}", (w, h)), functools.partial(exif_jpeg, k))
            for k in sorted(STORED_FOR)
        ],
        *[(Case(name.encode(), "too_large", "decompression bomb: " + name), make) for name, make in BOMBS.items()],
        (Case(b"lossy.webp", INDEXED, "WebP (lossy)", (w, h)), lambda: _pil(Image.fromarray(_rgb("rocket")), "WEBP")),
        (Case(b"lzw.tiff", INDEXED, "TIFF (LZW)", (w, h)), tiff),
        (Case(b"palette.gif", INDEXED, "GIF (palette)", (w, h)), lambda: _pil(Image.fromarray(_rgb("chelsea")), "GIF")),
        (Case(b"plain.bmp", INDEXED, "BMP", (w, h)), lambda: _cv(".bmp", _rgb("coffee")[:, :, ::-1])),
        (Case(b"caf\xe9-latin1.jpg", INDEXED, "non-UTF-8 (Latin-1) file name", (w, h)), lambda: jpeg("chelsea")),
        (Case(b"zero-\xff\xfe.jpg", "empty", "non-UTF-8 name on a rejected (empty) file"), const(b"")),
        (Case(b"line\nbreak.jpg", INDEXED, "newline inside the file name", (w, h)), lambda: jpeg("rocket")),
        (Case(b"dir.jpg/inside.jpg", INDEXED, "image inside a folder named like an image", (w, h)), jpeg),
        (
            Case(b"loop/inside.jpg", INDEXED, "image beside a symlink loop, indexed once", (w, h)),
            lambda: jpeg("astronaut"),
        ),
        (Case(b"no-read.jpg", "unreadable", "file of mode 000 (root: indexed)", (w, h)), jpeg),
        (
            Case(b"locked/inside.jpg", "unreadable", "image in a folder of mode 000 (root: indexed)", (w, h), True),
            png,
        ),
        (Case(VANISHING.encode(), "vanished", "deleted after the scan, before its chunk is decoded"), jpeg),
        (Case(b"notes.txt", "not_image_extension", "text file"), const(b"a list of photos\n")),
        (Case(b"README", "not_image_extension", "file without an extension"), const(b"readme\n")),
        (Case(b"clip.mp4", "not_image_extension", "video file in the pool"), const(b"\x00\x00\x00\x18ftypmp42")),
        (Case(b"bad-\xff.txt", "not_image_extension", "non-UTF-8 name on a non-image file"), const(b"x")),
        (Case(b".hidden.jpg", SKIPPED, "hidden file"), jpeg),
        (Case(b".DS_Store", SKIPPED, "macOS folder metadata"), const(b"\x00\x00\x00\x01Bud1")),
        (Case(b".thumbs/thumb.jpg", SKIPPED, "image inside a hidden folder"), jpeg),
    ]


# Symlinks and special files: (case, how to make it).
def _specials() -> list[tuple[Case, Callable[[Path], None]]]:
    w, h = PICTURE_SIZE
    return [
        (
            Case(b"loop/again", SKIPPED, "symlink to its parent folder (a loop): not walked twice"),
            lambda p: os.symlink("..", p),
        ),
        (
            Case(b"self-loop.jpg", "unreadable", "symlink pointing to itself (ELOOP)"),
            lambda p: os.symlink(p.name, p),
        ),
        (Case(b"dangling.jpg", "unreadable", "symlink to a missing file"), lambda p: os.symlink("missing.jpg", p)),
        (
            Case(b"link-to-plain.jpg", INDEXED, "symlink to an image in the pool", (w, h)),
            lambda p: os.symlink("plain.jpg", p),
        ),
        (Case(b"pipe.jpg", "not_regular_file", "FIFO named .jpg (never blocks)"), lambda p: os.mkfifo(p)),
        (Case(HUGE.encode(), "too_large", "1 GiB file behind a JPEG signature (sparse: no disk)"), _huge_sparse),
    ]


def hostile_cases() -> list[Case]:
    """Every case of the pool, without writing anything."""
    return [case for case, _ in _files()] + [case for case, _ in _specials()]


def _huge_sparse(path: Path) -> None:
    with open(path, "wb") as handle:
        handle.write(jpeg()[:1024])
        handle.truncate(HUGE_BYTES)


def running_as_root() -> bool:
    return os.geteuid() == 0


def expected_outcome(case: Case, privileged: bool | None = None) -> str:
    """The outcome for a run that can (root) or cannot read mode-000 files; default: this process."""
    if privileged is None:
        privileged = running_as_root()
    if case.outcome == "unreadable" and case.size is not None and privileged:
        return INDEXED
    return case.outcome


def make_hostile_pool(root: Path) -> list[Case]:
    """Write the hostile pool into ``root`` (created); return every case with its expected outcome."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for case, make in _files():
        path = root / case.fs_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make())
        cases.append(case)
    for case, create in _specials():
        create(root / case.fs_path)
        cases.append(case)
    # Permissions last: a folder of mode 000 cannot be written into.
    (root / "no-read.jpg").chmod(0)
    (root / "locked").chmod(0)
    return cases


def restore_permissions(root: Path) -> None:
    """Undo the mode-000 entries so the pool can be deleted by a non-root user."""
    (root / "locked").chmod(0o755)
    (root / "no-read.jpg").chmod(0o644)


def outcome_table(cases: list[Case]) -> str:
    """The Markdown table docs/reliability.md shows."""
    lines = ["| input | outcome |", "|---|---|"]
    for case in cases:
        outcome = case.outcome if case.outcome in (INDEXED, SKIPPED) else f"rejected: `{case.outcome}`"
        lines.append(f"| {case.what} | {outcome} |")
    return "\n".join(lines)


if __name__ == "__main__":
    target = Path(sys.argv[1])
    print(outcome_table(make_hostile_pool(target)))
