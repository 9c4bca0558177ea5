"""Read what an image file declares about itself, without decoding a pixel.

Knowing the declared size before decoding is what makes the decompression-bomb
guard cheap, lets JPEG decoding pick its DCT scale, and lets a cut-short file be
refused instead of being decoded into a grey-padded picture. Every parser here
works on bytes already in memory, bounds-checks each read and costs microseconds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shared.errors import ImageDecodeError

FORMATS = ("jpeg", "png", "gif", "bmp", "webp", "tiff")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# SOF0..SOF15 minus DHT (C4), JPG (C8) and DAC (CC), which share the range but carry no frame size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}
_TAG_WIDTH, _TAG_HEIGHT, _TAG_ORIENTATION = 256, 257, 274
_TAG_STRIP_OFFSETS, _TAG_STRIP_BYTES, _TAG_TILE_OFFSETS, _TAG_TILE_BYTES = 273, 279, 324, 325
_SIZE_TAGS = frozenset({_TAG_WIDTH, _TAG_HEIGHT, _TAG_ORIENTATION})
_TIFF_TAGS = _SIZE_TAGS | {_TAG_STRIP_OFFSETS, _TAG_STRIP_BYTES, _TAG_TILE_OFFSETS, _TAG_TILE_BYTES}
_MAX_IFD_ENTRIES = 4096  # a real IFD0 has tens of entries; garbage must not loop for long
_MAX_TIFF_VALUES = 1 << 20  # strips/tiles per image; more is garbage, not a picture


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the file declares. Width and height are as stored, before EXIF orientation."""

    format: str
    width: int
    height: int
    orientation: int = 1  # EXIF orientation 1..8; 1 when absent or invalid
    complete: bool = True  # the file reaches its end marker (JPEG EOI, PNG IEND, RIFF/BMP size)
    cmyk: bool = False  # JPEG with four components (CMYK or YCCK)
    cmyk_inverted: bool = False  # Adobe APP14 present: CMYK samples are stored inverted (Photoshop)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) once EXIF orientation is applied: orientations 5-8 swap the axes."""
        if self.orientation >= 5:
            return self.height, self.width
        return self.width, self.height


def sniff_format(data: bytes) -> str | None:
    """The format named by the file's magic bytes, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == _PNG_SIGNATURE:
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM" and len(data) >= 18:
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def probe_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) as stored in the header, or None when the format is unknown or the header unreadable."""
    try:
        header = read_header(data)
    except ImageDecodeError:
        return None
    return header.width, header.height


def read_header(data: bytes) -> ImageHeader:
    """Parse the header of a JPEG, PNG, GIF, BMP, WebP or TIFF held in memory.

    Raises ImageDecodeError: "not_an_image" (no known magic), "truncated" (the data ends
    before the size is declared), "unsupported" (a known format whose header makes no sense).
    """
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageDecodeError("not_an_image", "no JPEG, PNG, GIF, BMP, WebP or TIFF signature")
    try:
        header = _PARSERS[fmt](data)
    except (struct.error, IndexError, ValueError):  # ValueError: bytes.index found no further marker
        raise ImageDecodeError("truncated", f"{fmt} header is cut short ({len(data)} bytes)") from None
    if header.width <= 0 or header.height <= 0:
        raise ImageDecodeError("unsupported", f"{fmt} header declares {header.width}x{header.height} pixels")
    return header


def _jpeg(data: bytes) -> ImageHeader:
    size: tuple[int, int] | None = None
    components = 3
    orientation = 1
    adobe = False
    pos = 2
    n = len(data)
    while True:
        if data[pos] != 0xFF:
            # libjpeg skips stray bytes between segments (with a warning); do the same.
            pos = data.index(b"\xff", pos)
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            raise ImageDecodeError("unsupported", "JPEG ends before any image data")
        if marker == 0xDA:
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if length < 2 or end > n:
            raise IndexError("segment runs past the end")
        body = pos + 4
        if marker in _JPEG_SOF and size is None:
            height, width, components = struct.unpack_from(">HHB", data, body + 1)
            size = (width, height)
        elif marker == 0xE1 and orientation == 1 and data[body : body + 6] == b"Exif\x00\x00":
            orientation = _exif_orientation(data, body + 6, end)
        elif marker == 0xEE and data[body : body + 5] == b"Adobe":
            adobe = True
        pos = end
    if size is None:
        raise ImageDecodeError("unsupported", "JPEG has no frame header (SOF) before its scan")
    # In entropy-coded data every 0xFF is followed by 0x00, a restart marker or a real marker,
    # so the first FFD9 after the first scan is the end of the image.
    complete = data.rfind(b"\xff\xd9", pos) >= 0  # from the end: instant when the file ends with EOI
    cmyk = components == 4
    return ImageHeader("jpeg", size[0], size[1], orientation, complete, cmyk, cmyk and adobe)


def _png(data: bytes) -> ImageHeader:
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length < 13:
        raise ImageDecodeError("unsupported", "PNG does not start with an IHDR chunk")
    width, height = struct.unpack_from(">II", data, 16)
    orientation = 1
    complete = False
    pos = 8
    n = len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if end > n:
            break
        if kind == b"IEND":
            complete = True
            break
        if kind == b"eXIf" and orientation == 1:
            orientation = _exif_orientation(data, pos + 8, pos + 8 + length)
        pos = end
    return ImageHeader("png", width, height, orientation, complete)


def _gif(data: bytes) -> ImageHeader:
    width, height = struct.unpack_from("<HH", data, 6)
    return ImageHeader("gif", width, height)


def _bmp(data: bytes) -> ImageHeader:
    (pixel_offset,) = struct.unpack_from("<I", data, 10)
    (info_size,) = struct.unpack_from("<I", data, 14)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _planes, bits = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    else:
        width, height, _planes, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    height = abs(height)  # negative height marks a top-down bitmap
    complete = True
    # BI_RGB / BI_BITFIELDS rows have a known size: a file shorter than its last row is cut short.
    if compression in (0, 3) and bits in (1, 4, 8, 16, 24, 32) and width > 0 and height > 0:
        stride = (width * bits + 31) // 32 * 4
        complete = len(data) >= pixel_offset + stride * (height - 1) + (width * bits + 7) // 8
    return ImageHeader("bmp", width, height, 1, complete)


def _webp(data: bytes) -> ImageHeader:
    if len(data) < 30:  # every first-chunk kind declares its size within the first 30 bytes
        raise IndexError("WebP header cut short")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    complete = len(data) >= 8 + riff_size
    kind = data[12:16]
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageDecodeError("unsupported", "WebP VP8 frame has no start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return ImageHeader("webp", width & 0x3FFF, height & 0x3FFF, 1, complete)
    if kind == b"VP8L":
        if data[20] != 0x2F:
            raise ImageDecodeError("unsupported", "WebP VP8L stream has no signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1, complete)
    if kind == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height, _webp_orientation(data), complete)
    raise ImageDecodeError("unsupported", f"WebP with unknown first chunk {kind!r}")


def _webp_orientation(data: bytes) -> int:
    pos = 12
    n = len(data)
    while pos + 8 <= n:
        kind = data[pos : pos + 4]
        (length,) = struct.unpack_from("<I", data, pos + 4)
        if kind == b"EXIF":
            return _exif_orientation(data, pos + 8, min(n, pos + 8 + length))
        pos += 8 + length + (length & 1)
    return 1


def _tiff(data: bytes) -> ImageHeader:
    tags = _ifd0_tags(data, 0, len(data), _TIFF_TAGS)
    if tags is None or _TAG_WIDTH not in tags or _TAG_HEIGHT not in tags:
        raise ImageDecodeError("unsupported", "TIFF first directory has no image width/length")
    orientation = tags.get(_TAG_ORIENTATION, [1])[0]
    # Pixel data lives in strips or tiles at declared offsets: one that ends past the file is cut short.
    complete = True
    for offsets_tag, counts_tag in ((_TAG_STRIP_OFFSETS, _TAG_STRIP_BYTES), (_TAG_TILE_OFFSETS, _TAG_TILE_BYTES)):
        offsets, counts = tags.get(offsets_tag, []), tags.get(counts_tag, [])
        if offsets and len(offsets) == len(counts):
            complete = complete and max(o + c for o, c in zip(offsets, counts, strict=True)) <= len(data)
    return ImageHeader(
        "tiff",
        tags[_TAG_WIDTH][0],
        tags[_TAG_HEIGHT][0],
        orientation if 1 <= orientation <= 8 else 1,
        complete,
    )


def _exif_orientation(data: bytes, start: int, end: int) -> int:
    """Orientation from an EXIF block (a TIFF structure), 1 when absent or malformed."""
    if data[start : start + 6] == b"Exif\x00\x00":  # some PNG/WebP writers keep the JPEG prefix
        start += 6
    try:
        tags = _ifd0_tags(data, start, end, _SIZE_TAGS)
    except (struct.error, IndexError):
        return 1
    value = 1 if tags is None else tags.get(_TAG_ORIENTATION, [1])[0]
    return value if 1 <= value <= 8 else 1


def _ifd0_tags(data: bytes, base: int, end: int, wanted: frozenset[int]) -> dict[int, list[int]] | None:
    """The values of the ``wanted`` tags in the first IFD of a TIFF structure at ``base``.

    Offsets inside a TIFF structure are relative to its start, which is how EXIF
    blocks embedded in JPEG/PNG/WebP are read with the same code. BigTIFF included.
    """
    order = data[base : base + 2]
    if order == b"II":
        e = "<"
    elif order == b"MM":
        e = ">"
    else:
        return None
    (magic,) = struct.unpack_from(e + "H", data, base + 2)
    if magic == 42:
        (ifd,) = struct.unpack_from(e + "I", data, base + 4)
        count_fmt, entry_size, entry_fmt, offset_fmt = "H", 12, "HHI", "I"
    elif magic == 43:
        (ifd,) = struct.unpack_from(e + "Q", data, base + 8)
        count_fmt, entry_size, entry_fmt, offset_fmt = "Q", 20, "HHQ", "Q"
    else:
        return None
    field_size = struct.calcsize(offset_fmt)
    pos = base + ifd
    (count,) = struct.unpack_from(e + count_fmt, data, pos)
    pos += struct.calcsize(count_fmt)
    if count > _MAX_IFD_ENTRIES:
        return None
    if pos + count * entry_size > end:
        raise IndexError("TIFF directory runs past the end")
    tags: dict[int, list[int]] = {}
    value_formats = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
    for i in range(count):
        entry = pos + i * entry_size
        tag, kind, n_values = struct.unpack_from(e + entry_fmt, data, entry)
        if tag not in wanted or kind not in value_formats or not 1 <= n_values <= _MAX_TIFF_VALUES:
            continue
        field = entry + entry_size - field_size
        values_fmt = f"{e}{n_values}{value_formats[kind]}"
        if struct.calcsize(values_fmt) <= field_size:  # small values are stored inline, left-justified
            at = field
        else:
            at = base + struct.unpack_from(e + offset_fmt, data, field)[0]
        if at + struct.calcsize(values_fmt) > end:
            raise IndexError("TIFF tag values run past the end")
        tags[tag] = list(struct.unpack_from(values_fmt, data, at))
    return tags


_PARSERS = {"jpeg": _jpeg, "png": _png, "gif": _gif, "bmp": _bmp, "webp": _webp, "tiff": _tiff}
