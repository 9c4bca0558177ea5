"""shared.images / shared.image_header on real pictures written to disk in the test."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psutil
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageOps
from skimage import data

from shared.errors import ImageDecodeError
from shared.images import (
    BACKGROUND_GREY,
    Backend,
    center_crop_box,
    center_crop_to_aspect,
    decode_image,
    load_prepared,
    prepare_image,
    probe_dimensions,
    read_header,
    read_image_bytes,
    resize_smoothly,
    sniff_format,
)
from tests.hostile.make_pool import STORED_FOR

BACKENDS: list[Backend] = ["simplejpeg", "opencv"]


def rgb(name: str) -> NDArray[np.uint8]:
    image: NDArray[np.uint8] = getattr(data, name)()
    return image


def bgr(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    return np.ascontiguousarray(image[..., ::-1])


def mad(a: NDArray[Any], b: NDArray[Any]) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def pil_bytes(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_of(image_bgr: NDArray[np.uint8], quality: int = 90) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def scaled_astronaut(width: int, height: int) -> NDArray[np.uint8]:
    resized = cv2.resize(bgr(rgb("astronaut")), (width, height), interpolation=cv2.INTER_CUBIC)
    return np.asarray(resized, dtype=np.uint8)


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def reason_of(payload: bytes, **options: Any) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(payload, **options)
    return caught.value.reason


# --- JPEG backends and DCT scaling -------------------------------------------------------------


def test_both_jpeg_backends_give_nearly_the_same_prepared_image(tmp_path: Path) -> None:
    path = write(tmp_path / "coffee.jpg", jpeg_of(bgr(rgb("coffee"))))
    fast, size_t = load_prepared(path, (256, 144), backend="simplejpeg")
    opencv, size_o = load_prepared(path, (256, 144), backend="opencv")
    auto, _ = load_prepared(path, (256, 144))
    assert size_t == size_o == (600, 400)
    assert fast.shape == opencv.shape == (144, 256, 3)
    assert mad(fast, opencv) < 1.0
    assert mad(auto, fast) == 0.0  # auto means simplejpeg when it is installed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("source", "orientation", "wanted", "expected"),
    [
        ((1280, 720), 1, (256, 144), (320, 180)),  # 1/4
        ((2048, 1536), 1, (256, 144), (256, 192)),  # 1/8, crop 256x144 exactly
        ((4000, 3000), 1, (256, 144), (500, 375)),  # 1/8, already < 2x
        ((1280, 720), 1, (384, 216), (640, 360)),  # 1/2
        ((1280, 720), 1, (1024, 576), (1280, 720)),  # full size
        ((720, 1280), 1, (256, 144), (360, 640)),  # portrait into a 16:9 crop needs width 256: 1/2
        ((1280, 720), 6, (256, 144), (360, 640)),  # the same picture stored sideways with EXIF 6
        ((300, 200), 1, (1024, 576), (300, 200)),  # too small for the request: full size, no error
    ],
)
def test_dct_scaling_picks_the_smallest_sufficient_scale(
    backend: Backend,
    source: tuple[int, int],
    orientation: int,
    wanted: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = pil_bytes(Image.fromarray(scaled_astronaut(*source)[..., ::-1]), "JPEG", quality=85, exif=exif)
    image = decode_image(payload, min_size=wanted, aspect=wanted[0] / wanted[1], backend=backend)
    assert (image.shape[1], image.shape[0]) == expected
    aspect = wanted[0] / wanted[1]
    _, _, crop_w, crop_h = center_crop_box(image.shape[1], image.shape[0], aspect)
    display_w, display_h = source if orientation < 5 else source[::-1]
    _, _, full_w, full_h = center_crop_box(display_w, display_h, aspect)
    if full_w >= wanted[0] and full_h >= wanted[1]:  # the source is big enough for the request
        assert crop_w >= wanted[0] and crop_h >= wanted[1]
        smallest_scale = image.shape[1] == -(-display_w // 8)
        assert smallest_scale or crop_w < 2 * wanted[0] or crop_h < 2 * wanted[1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_min_size_decodes_full_size_and_aspect_alone_changes_nothing(backend: Backend) -> None:
    payload = jpeg_of(scaled_astronaut(1280, 720))
    assert decode_image(payload, backend=backend).shape == (720, 1280, 3)
    assert decode_image(payload, aspect=1.0, backend=backend).shape == (720, 1280, 3)
    assert decode_image(payload, min_size=(1, 1), backend=backend).shape == (90, 160, 3)


# --- EXIF orientation --------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 3.0),
        ("PNG", {}, 0.0),
        ("WEBP", {"lossless": True, "method": 0}, 0.0),
        ("TIFF", {}, 0.0),
    ],
)
def test_exif_orientation_gives_the_upright_picture(
    fmt: str, options: dict[str, Any], tolerance: float, orientation: int
) -> None:
    upright = rgb("chelsea")  # 451 x 300: not square, so a wrong turn changes the shape
    transpose = STORED_FOR.get(orientation)  # 1: stored upright
    stored = Image.fromarray(upright) if transpose is None else Image.fromarray(upright).transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = pil_bytes(stored, fmt, exif=exif, **options)
    # The test's own setup is right: Pillow turns the stored picture upright again.
    assert np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(payload))).convert("RGB")).shape == upright.shape
    backends: list[Backend] = ["opencv", "simplejpeg"] if fmt == "JPEG" else ["auto"]
    for backend in backends:
        decoded = decode_image(payload, backend=backend)
        assert decoded.flags.c_contiguous
        assert mad(decoded, bgr(upright)) <= tolerance, (fmt, orientation, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exif_orientation_at_a_reduced_scale(tmp_path: Path, backend: Backend) -> None:
    upright = scaled_astronaut(720, 1280)  # portrait
    stored = Image.fromarray(upright[..., ::-1]).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = write(tmp_path / "sideways.jpg", pil_bytes(stored, "JPEG", quality=95, exif=exif))
    prepared, original = load_prepared(path, (144, 256), backend=backend)
    assert original == (720, 1280)
    assert mad(prepared, prepare_image(upright, (144, 256))) < 3.0


def with_app1(jpeg: bytes, exif_block: bytes) -> bytes:
    body = b"Exif\x00\x00" + exif_block
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


@pytest.mark.parametrize("backend", BACKENDS)
def test_big_endian_and_malformed_exif(backend: Backend) -> None:
    upright = rgb("chelsea")
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # what a camera stores for orientation 6
    jpeg = jpeg_of(bgr(stored), quality=95)
    motorola = b"MM\x00*" + struct.pack(">IH", 8, 1) + struct.pack(">HHIH2x", 0x0112, 3, 1, 6) + b"\x00" * 4
    assert mad(decode_image(with_app1(jpeg, motorola), backend=backend), bgr(upright)) < 3.0
    for garbage in (b"II*\x00\xf0\xff\xff\xff", b"MM\x00*\x00\x00\x00\x08\xff\xff", b"XX", b""):
        assert decode_image(with_app1(jpeg, garbage), backend=backend).shape == stored.shape


# --- colour normalisation and formats ----------------------------------------------------------


def test_16_bit_png_is_scaled_not_clipped() -> None:
    image8 = bgr(rgb("astronaut"))
    ok, encoded = cv2.imencode(".png", image8.astype(np.uint16) * 257)
    assert ok
    decoded = decode_image(encoded.tobytes())
    assert decoded.dtype == np.uint8
    assert mad(decoded, image8) == 0.0


def test_16_bit_grey_png() -> None:
    camera = rgb("camera")
    payload = pil_bytes(Image.fromarray(camera.astype(np.uint16) * 257), "PNG")
    decoded = decode_image(payload)
    assert mad(decoded, np.repeat(camera[:, :, None], 3, axis=2)) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_grey_jpeg_and_png_become_three_equal_channels(backend: Backend) -> None:
    camera = rgb("camera")
    for fmt in ("JPEG", "PNG"):
        decoded = decode_image(pil_bytes(Image.fromarray(camera), fmt, quality=95), backend=backend)
        assert decoded.shape == (*camera.shape, 3)
        assert np.array_equal(decoded[..., 0], decoded[..., 1])
        assert np.array_equal(decoded[..., 0], decoded[..., 2])
        assert mad(decoded[..., 0], camera) < 2.0


def test_rgba_png_is_composited_on_mid_grey() -> None:
    upright = rgb("astronaut")
    height, width = upright.shape[:2]
    alpha = np.zeros((height, width), np.uint8)
    alpha[:, width // 2 :] = 255
    alpha[: height // 4, width // 2 :] = 64
    colour = upright.copy()
    colour[:, : width // 2] = (255, 0, 255)  # what an encoder leaves under transparent pixels
    rgba = np.dstack([colour, alpha])
    decoded = decode_image(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")).astype(np.int32)
    assert np.all(decoded[:, : width // 2] == BACKGROUND_GREY)
    opaque = decoded[height // 4 :, width // 2 :]
    assert mad(opaque, bgr(upright)[height // 4 :, width // 2 :]) == 0.0
    blended = decoded[: height // 4, width // 2 :]
    expected = (bgr(upright)[: height // 4, width // 2 :].astype(np.int32) * 64 + BACKGROUND_GREY * 191) / 255
    assert np.abs(blended - expected).max() <= 1.0


def test_grey_alpha_and_palette_transparency_pngs() -> None:
    camera = rgb("camera")
    alpha = np.full(camera.shape, 255, np.uint8)
    alpha[:100] = 0
    decoded = decode_image(pil_bytes(Image.fromarray(np.dstack([camera, alpha]), "LA"), "PNG"))
    assert np.all(decoded[:100] == BACKGROUND_GREY)
    assert mad(decoded[100:, :, 1], camera[100:]) == 0.0
    palette = Image.fromarray(rgb("coffee")).quantize(64)
    transparent_index = palette.getpixel((0, 0))
    decoded = decode_image(pil_bytes(palette, "PNG", transparency=transparent_index))
    reference = np.asarray(palette.convert("RGB"))[..., ::-1]
    mask = np.asarray(palette) == transparent_index
    assert np.all(decoded[mask] == BACKGROUND_GREY)
    assert mad(decoded[~mask], reference[~mask]) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_cmyk_jpeg_keeps_its_colours(backend: Backend) -> None:
    original = rgb("coffee")
    payload = pil_bytes(Image.fromarray(original).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(payload)).mode == "CMYK"
    decoded = decode_image(payload, backend=backend)
    assert mad(decoded, bgr(original)) < 3.0
    # Colour, not just brightness: each channel's mean matches (a swapped or inverted channel would not).
    assert np.abs(decoded.reshape(-1, 3).mean(0) - bgr(original).reshape(-1, 3).mean(0)).max() < 2.0


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("WEBP", {"quality": 90}),
        ("WEBP", {"lossless": True}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("BMP", {}),
        ("GIF", {}),
        ("PNG", {}),
    ],
)
def test_other_formats_decode_like_pillow(fmt: str, options: dict[str, Any]) -> None:
    source = Image.fromarray(rgb("rocket"))  # 640 x 427
    payload = pil_bytes(source, fmt, **options)
    reference = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))[..., ::-1]
    decoded = decode_image(payload)
    assert decoded.dtype == np.uint8 and decoded.shape == (427, 640, 3)
    assert mad(decoded, reference) < 1.0
    assert probe_dimensions(payload) == (640, 427)
    assert sniff_format(payload) == {"WEBP": "webp", "TIFF": "tiff", "BMP": "bmp", "GIF": "gif", "PNG": "png"}[fmt]


def test_gif_first_frame() -> None:
    frames = [Image.fromarray(rgb("chelsea")), Image.fromarray(rgb("chelsea")[::-1].copy())]
    payload = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    reference = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))[..., ::-1]
    assert mad(decode_image(payload), reference) < 1.0


def test_probe_dimensions_reads_headers_only() -> None:
    payload = jpeg_of(scaled_astronaut(1280, 720))
    assert probe_dimensions(payload) == (1280, 720)
    assert sniff_format(payload) == "jpeg"
    assert probe_dimensions(b"hello, world") is None
    assert sniff_format(b"hello, world") is None
    assert probe_dimensions(payload[:10]) is None  # cut before the frame header


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_jpeg_is_refused(tmp_path: Path, backend: Backend) -> None:
    payload = jpeg_of(bgr(rgb("coffee")))
    for cut in (payload[: len(payload) // 2], payload[:-2], payload[:400]):
        assert reason_of(cut, backend=backend) == "truncated"
    path = write(tmp_path / "half.jpg", payload[: len(payload) // 2])
    with pytest.raises(ImageDecodeError) as caught:
        load_prepared(path, (256, 144), backend=backend)
    assert caught.value.reason == "truncated"


def test_jpeg_scan_cut_short_but_ending_in_eoi_is_refused_by_simplejpeg() -> None:
    payload = jpeg_of(bgr(rgb("coffee")))
    assert reason_of(payload[: len(payload) // 2] + b"\xff\xd9", backend="simplejpeg") == "truncated"


@pytest.mark.parametrize("backend", BACKENDS)
def test_harmless_jpeg_warnings_are_accepted(backend: Backend) -> None:
    payload = jpeg_of(bgr(rgb("coffee")))
    padded = payload[:-2] + b"\x00\x00\xff\xd9"  # "extraneous bytes before marker 0xd9"
    assert decode_image(padded, backend=backend).shape == (400, 600, 3)


def test_truncated_png_webp_bmp_are_refused() -> None:
    png = pil_bytes(Image.fromarray(rgb("coffee")), "PNG")
    for cut in (png[: len(png) // 2], png[:-12], png[:30]):
        assert reason_of(cut) == "truncated"
    webp = pil_bytes(Image.fromarray(rgb("coffee")), "WEBP")
    assert reason_of(webp[: len(webp) // 2]) == "truncated"
    bmp = pil_bytes(Image.fromarray(rgb("coffee")), "BMP")
    assert reason_of(bmp[: len(bmp) // 2]) == "truncated"


def test_truncated_gif_and_tiff_are_refused() -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("GIF", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("TIFF", {"tile": True}),
    ]
    for fmt, options in cases:
        payload = pil_bytes(Image.fromarray(rgb("coffee")), fmt, **options)
        for cut in (len(payload) // 2, len(payload) - 1, 10):
            assert reason_of(payload[:cut]) == "truncated", (fmt, options, cut)


def test_big_tiff() -> None:
    payload = pil_bytes(Image.fromarray(rgb("coffee")), "TIFF", big_tiff=True)
    assert payload[:4] == b"II+\x00"
    assert probe_dimensions(payload) == (600, 400)
    assert mad(decode_image(payload), bgr(rgb("coffee"))) == 0.0


def test_headers_never_fail_with_anything_but_image_decode_error() -> None:
    rng = np.random.default_rng(0)
    source = Image.fromarray(rgb("coffee")[:64, :96].copy())
    exif = Image.Exif()
    exif[0x0112] = 3
    samples = [pil_bytes(source, fmt, exif=exif) for fmt in ("JPEG", "PNG", "WEBP", "TIFF")]
    samples += [pil_bytes(source, fmt) for fmt in ("GIF", "BMP")]
    for payload in samples:
        for cut in range(0, min(len(payload), 400)):
            assert probe_dimensions(payload[:cut]) in (None, (96, 64))
        for _ in range(300):
            damaged = bytearray(payload[:400])
            damaged[int(rng.integers(4, len(damaged)))] = int(rng.integers(0, 256))
            with contextlib.suppress(ImageDecodeError):
                read_header(bytes(damaged))


def test_empty_text_tiny_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError) as caught:
        read_image_bytes(write(tmp_path / "empty.jpg", b""))
    assert caught.value.reason == "empty"
    assert reason_of(b"") == "empty"
    text = write(tmp_path / "notes.jpg", b"these are my holiday notes, not a picture\n" * 20)
    assert reason_of(read_image_bytes(text)) == "not_an_image"
    one_pixel = pil_bytes(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG")
    assert reason_of(one_pixel) == "too_small"
    assert reason_of(pil_bytes(Image.new("RGB", (7, 300)), "JPEG")) == "too_small"
    ihdr = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    garbage_idat = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"not zlib" * 10)
    assert reason_of(garbage_idat + png_chunk(b"IEND", b"")) == "unsupported"


def test_read_errors(tmp_path: Path) -> None:
    for target, reason in [
        (tmp_path / "missing.jpg", "vanished"),
        (tmp_path, "unreadable"),
    ]:
        with pytest.raises(ImageDecodeError) as caught:
            read_image_bytes(target)
        assert caught.value.reason == reason
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError) as caught:
        read_image_bytes(fifo)  # must not block waiting for a writer
    assert caught.value.reason == "unreadable"


def bomb_png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def bomb_jpeg(width: int, height: int) -> bytes:
    payload = bytearray(jpeg_of(bgr(rgb("coffee"))[:64, :64]))
    sof = payload.index(b"\xff\xc0")
    struct.pack_into(">HH", payload, sof + 5, height, width)
    return bytes(payload)


@pytest.mark.parametrize("backend", BACKENDS)
def test_decompression_bomb_is_refused_before_decoding(backend: Backend) -> None:
    bombs = {"png": bomb_png(60000, 60000), "jpeg": bomb_jpeg(60000, 60000)}
    process = psutil.Process()
    for name, payload in bombs.items():
        assert len(payload) < 10_000
        assert probe_dimensions(payload) == (60000, 60000)
        rss_before = process.memory_info().rss
        tracemalloc.start()
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(payload, backend=backend)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert caught.value.reason == "too_large", name
        assert "60000x60000" in caught.value.detail
        assert peak < 20 * 2**20
        assert process.memory_info().rss - rss_before < 20 * 2**20
    assert reason_of(jpeg_of(bgr(rgb("coffee"))), max_pixels=200_000) == "too_large"
    assert decode_image(jpeg_of(bgr(rgb("coffee"))), max_pixels=240_000).shape == (400, 600, 3)


# --- paths, crop and prepare -------------------------------------------------------------------


def test_non_utf8_file_name_reads_fine(tmp_path: Path) -> None:
    path = tmp_path / os.fsdecode(b"caf\xe9 \xff.jpg")
    with open(path, "wb") as handle:
        handle.write(jpeg_of(bgr(rgb("coffee"))))
    assert os.fsencode(path.name) == b"caf\xe9 \xff.jpg"
    prepared, original = load_prepared(path, (256, 144))
    assert prepared.shape == (144, 256, 3) and original == (600, 400)
    with pytest.raises(ImageDecodeError) as caught:
        read_image_bytes(tmp_path / os.fsdecode(b"gon\xe9.jpg"))
    assert caught.value.reason == "vanished"
    caught.value.args[0].encode("utf-8")  # the message prints on any UTF-8 terminal


def test_center_crop_keeps_the_centre_and_never_letterboxes() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = 255  # a white square in the centre
    square = center_crop_to_aspect(image, 1.0)
    assert square.shape == (100, 100, 3)
    assert np.shares_memory(square, image)  # a view, no copy
    assert np.array_equal(square, image[:, 50:150])
    tall = center_crop_to_aspect(image, 0.5)
    assert tall.shape == (100, 50, 3) and np.array_equal(tall, image[:, 75:125])
    wide = center_crop_to_aspect(image, 4.0)
    assert wide.shape == (50, 200, 3) and np.array_equal(wide, image[25:75])
    for aspect in (0.1, 0.75, 1.0, 16 / 9, 2.0, 10.0):
        crop = center_crop_to_aspect(image, aspect)
        assert crop.shape[0] <= 100 and crop.shape[1] <= 200
        assert crop.shape[0] == 100 or crop.shape[1] == 200  # the largest box: one side is whole
        assert crop[crop.shape[0] // 2, crop.shape[1] // 2].tolist() == [255, 255, 255]
    with pytest.raises(ValueError):
        center_crop_box(100, 100, 0.0)


@pytest.mark.parametrize("size", [(256, 144), (144, 256), (224, 224), (1920, 1080)])
def test_prepare_image_gives_exact_size_for_landscape_and_portrait(size: tuple[int, int]) -> None:
    landscape = bgr(rgb("coffee"))  # 600 x 400
    portrait = np.ascontiguousarray(landscape.transpose(1, 0, 2))
    small = landscape[::20, ::20]  # 30 x 20, must be enlarged
    for source in (landscape, portrait, small, landscape[:, ::-1]):
        prepared = prepare_image(source, size)
        assert prepared.shape == (size[1], size[0], 3)
        assert prepared.dtype == np.uint8 and prepared.flags.c_contiguous


def test_prepare_image_content_is_the_centre_crop() -> None:
    landscape = bgr(rgb("coffee"))  # 600 x 400 -> centre 400 x 400
    prepared = prepare_image(landscape, (200, 200))
    expected = cv2.resize(landscape[:, 100:500], (200, 200), interpolation=cv2.INTER_AREA)
    assert mad(prepared, expected) == 0.0
    same = prepare_image(landscape[:, 100:500], (400, 400))
    assert np.array_equal(same, landscape[:, 100:500])


# --- resize_smoothly: INTER_AREA's result at bilinear's cost -------------------------------------


@pytest.mark.parametrize("factor", [1.3, 2.0, 3.7, 10.8])
def test_resize_smoothly_stays_close_to_inter_area_on_a_photo(factor: float) -> None:
    picture = bgr(rgb("astronaut"))
    size = (round(picture.shape[1] / factor), round(picture.shape[0] / factor))
    area = cv2.resize(picture, size, interpolation=cv2.INTER_AREA).astype(np.int16)
    smooth = resize_smoothly(picture, size)
    assert smooth.shape == (size[1], size[0], 3) and smooth.dtype == np.uint8
    # Within a few grey levels (above 2x the centred crop of up to j - 1 edge pixels adds a shift).
    assert np.abs(smooth.astype(np.int16) - area).mean() < (1.0 if factor <= 2 else 4.0)


@pytest.mark.parametrize("factor", [3.7, 10.8])
def test_resize_smoothly_does_not_alias_fine_stripes(factor: float) -> None:
    # One-pixel stripes shrunk by more than 2x: a plain bilinear resize samples mostly one colour
    # per output pixel (grey levels spread by ~70), an averaging resize gives an even grey.
    stripes = np.zeros((300, 740, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    size = (int(740 / factor), int(300 / factor))
    assert cv2.resize(stripes, size, interpolation=cv2.INTER_LINEAR).std() > 50  # the trap is real
    smooth = resize_smoothly(stripes, size)
    assert smooth.std() < 10 and abs(float(smooth.mean()) - 127.5) < 10
