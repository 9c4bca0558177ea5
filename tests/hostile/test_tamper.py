"""Bundle integrity and safety: tampered, incomplete, future or malicious bundles are refused.

Every file of a real bundle (flat and IVF, with a projection asset) gets a flipped byte;
``ff-index verify`` and open_bundle must refuse it naming the file. A bundle whose every
hash is valid but whose images.parquet points outside the pool must not make a reader
leave the pool root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from shared.bundle import BUILD_SUMMARY, MANIFEST, open_bundle, parse_manifest, verify_bundle
from shared.errors import EXIT_BUNDLE, BundleError, ImageDecodeError
from shared.images import BACKGROUND_GREY
from tests.hostile.bundles import (
    build_small_bundle,
    change_character,
    copy_bundle,
    flip_byte,
    forge_image_paths,
    rewrite_manifest,
    same_class_flip,
    write_small_pool,
)
from tests.hostile.procs import Arg, assert_clean_failure, run, run_all
from tests.hostile.renders import RENDER_ARGS, RenderMedia, decoded_frames, make_render_media


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """spatial_color (projection.npy) with an IVF index (index.faiss): every kind of bundle file."""
    root = tmp_path_factory.mktemp("tamper")
    write_small_pool(root / "pool")
    return build_small_bundle(root / "pool", root / "bundle", method="spatial_color", ivf=True)


def bundle_files(bundle: Path) -> list[str]:
    """The sealed files (and the manifest): everything but the build summary, which is not sealed."""
    return sorted(p.name for p in bundle.iterdir() if p.name != BUILD_SUMMARY)


def test_the_untouched_bundle_verifies(bundle: Path) -> None:
    # Every file here, tile data included, is covered by the flipped-byte and truncation tests below.
    assert bundle_files(bundle) == [
        "atlas.npy",
        "images.parquet",
        "index.faiss",
        "manifest.json",
        "projection.npy",
        "rejected.parquet",
        "tiles.faiss",
        "tiles.npy",
        "vectors.npy",
    ]
    verify_bundle(bundle)
    result = run("ff-index", ["verify", bundle])
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr
    # Beside them, the build summary (stage timings, different every run, so never sealed).
    assert (bundle / BUILD_SUMMARY).is_file()


def test_the_build_summary_is_outside_what_verify_checks(bundle: Path, tmp_path: Path) -> None:
    # Its timings differ run to run while identical builds seal identical bytes: it is not part of
    # the bundle's identity, so changing or deleting it leaves a bundle that verifies and opens.
    changed = copy_bundle(bundle, tmp_path / "changed")
    flip_byte(changed / BUILD_SUMMARY, 0)
    removed = copy_bundle(bundle, tmp_path / "removed")
    (removed / BUILD_SUMMARY).unlink()
    for copy in (changed, removed):
        assert verify_bundle(copy).bundle_id == verify_bundle(bundle).bundle_id
        open_bundle(copy, verify=True)


def test_a_flipped_byte_in_any_data_file_is_named_by_verify_and_open(bundle: Path, tmp_path: Path) -> None:
    names = [n for n in bundle_files(bundle) if n != MANIFEST]
    copies = []
    for name in names:
        size = (bundle / name).stat().st_size
        for position in (0, size // 2, size - 1):
            copy = copy_bundle(bundle, tmp_path / f"{name}-{position}")
            flip_byte(copy / name, position)
            with pytest.raises(BundleError, match=re.escape(f"{name}: sha256 differs")):
                verify_bundle(copy)
            with pytest.raises(BundleError, match=re.escape(f"{name}: sha256 differs")):
                open_bundle(copy)
            # Without verification only sizes and structure (headers, footers) are checked: a change
            # inside the data opens (the documented cost of --no-verify), a broken footer does not.
            try:
                open_bundle(copy, verify=False)
            except BundleError as exc:
                assert str(copy / name) in str(exc)
            copies.append((name, copy))
    # The command line, once per file (in parallel: each call is mostly interpreter start-up).
    firsts = [(name, copy) for name, copy in copies[::3]]
    for (name, copy), result in zip(firsts, run_all([("ff-index", ["verify", c]) for _, c in firsts]), strict=True):
        assert_clean_failure(result, EXIT_BUNDLE, str(copy / name), "sha256 differs")


def test_every_single_character_change_of_the_manifest_is_caught_by_its_seal(bundle: Path) -> None:
    where = bundle / MANIFEST
    data = where.read_bytes()
    sealed = 0
    for position, byte in enumerate(data):
        replacement = same_class_flip(byte)
        if replacement is None:
            continue  # punctuation and whitespace: a change there breaks the JSON or means nothing
        damaged = bytearray(data)
        damaged[position] = replacement
        try:
            parsed = json.loads(bytes(damaged))
        except ValueError:
            continue  # e.g. "true" -> "trve": refused as unreadable before any hash (read_manifest)
        with pytest.raises(BundleError) as caught:
            parse_manifest(where, parsed)
        message = str(caught.value)
        assert message.startswith(str(where)), message
        # format_version is read first (a future version may seal differently); everything else,
        # keys included, must fail the seal rather than whatever field check it would trip.
        assert "does not match the manifest's content (tampered?)" in message or "format version" in message, (
            position,
            message,
        )
        sealed += 1
    # Nearly every byte of the manifest is a hex digit, a letter or a number: all of those were tried.
    assert sealed > len(data) // 2
    copy = copy_bundle(bundle, bundle.parent / "manifest-flipped")
    change_character(copy / MANIFEST, len(data) // 2)
    assert_clean_failure(run("ff-index", ["verify", copy]), EXIT_BUNDLE, str(copy / MANIFEST), "tampered")


def test_a_truncated_file_is_refused_even_without_verification(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path / "cut")
    with open(copy / "vectors.npy", "r+b") as handle:
        handle.truncate((copy / "vectors.npy").stat().st_size - 4)
    with pytest.raises(BundleError, match=re.escape("vectors.npy: size")):
        open_bundle(copy, verify=False)


@pytest.mark.parametrize("version", [3, 0, "1", None])
def test_an_unknown_format_version_is_refused(bundle: Path, tmp_path: Path, version: object) -> None:
    copy = copy_bundle(bundle, tmp_path / "future")
    rewrite_manifest(copy, {"format_version": version})
    with pytest.raises(BundleError, match="format version"):
        open_bundle(copy)
    if version == 3:
        assert_clean_failure(run("ff-index", ["verify", copy]), EXIT_BUNDLE, "format version 3 is not supported")


def test_a_missing_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    for name in bundle_files(bundle):
        copy = copy_bundle(bundle, tmp_path / f"without-{name}")
        (copy / name).unlink()
        expected = "no manifest.json" if name == MANIFEST else f"{name}: missing from the bundle"
        with pytest.raises(BundleError, match=re.escape(expected)):
            open_bundle(copy, verify=False)
    assert_clean_failure(run("ff-index", ["verify", tmp_path / "without-vectors.npy"]), EXIT_BUNDLE, "missing")
    assert_clean_failure(run("ff-index", ["info", tmp_path / "nowhere"]), EXIT_BUNDLE, "no such bundle")


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/etc/passwd", "sub/x", "..", ".", "a\\b", ""])
def test_a_manifest_naming_a_file_outside_the_bundle_is_refused(bundle: Path, tmp_path: Path, name: str) -> None:
    copy = copy_bundle(bundle, tmp_path / "escape")
    # A real file with the right hash sits at the escaping path: only the name check stands in the way.
    outside = tmp_path / "x"
    outside.write_bytes(b"outside the bundle")
    files = json.loads((copy / MANIFEST).read_text())["files"]
    files[name] = {"bytes": 18, "sha256": "0" * 64}
    rewrite_manifest(copy, {"files": files})
    with pytest.raises(BundleError, match="must be a plain name inside the bundle"):
        open_bundle(copy, verify=False)
    if name == "/etc/passwd":
        assert_clean_failure(run("ff-index", ["verify", copy]), EXIT_BUNDLE, "refuses file name '/etc/passwd'")


ESCAPES = {
    0: b"../../etc/passwd",
    1: b"/etc/passwd",
    2: b"sub/../../outside.jpg",
    3: b"..",
    4: b"",
    5: b"ok\x00name.jpg",
    6: b"./",
}


def test_a_sealed_bundle_with_paths_outside_the_pool_never_leaves_the_pool(bundle: Path, tmp_path: Path) -> None:
    forged = forge_image_paths(bundle, tmp_path / "forged", ESCAPES)
    opened = open_bundle(forged)  # every hash is valid: it verifies
    root = opened.pool_root.resolve()
    for image_id, raw in ESCAPES.items():
        with pytest.raises(ImageDecodeError) as caught:
            opened.image_paths([image_id])
        assert caught.value.reason == "outside_pool", raw
    # The honest rows still resolve, inside the pool root.
    honest = opened.image_paths(list(range(len(ESCAPES), opened.count)))
    assert all(p.resolve().is_relative_to(root) and p.is_file() for p in honest)
    # The same holds under a --pool-root override.
    moved = tmp_path / "moved-pool"
    shutil.copytree(root, moved)
    for image_id in ESCAPES:
        with pytest.raises(ImageDecodeError):
            opened.image_paths([image_id], pool_root=moved)
    assert (moved / opened.relative_paths([len(ESCAPES)])[0]).is_file()


# --- ff-render's side ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> RenderMedia:
    return make_render_media(tmp_path_factory.mktemp("tamper-render"))


@pytest.mark.slow
def test_ff_render_refuses_a_tampered_bundle_unless_told_not_to_verify(media: RenderMedia, tmp_path: Path) -> None:
    copies = []
    for name in bundle_files(media.bundle):
        size = (media.bundle / name).stat().st_size
        for position in (size // 2, size - 1):  # inside the data; the last byte (Parquet footer magic)
            copy = copy_bundle(media.bundle, tmp_path / f"flip-{name}-{position}")
            # The manifest is text: a changed character must be caught by its seal, not by the JSON parser.
            (change_character if name == MANIFEST else flip_byte)(copy / name, position)
            copies.append((name, copy))
    calls: list[tuple[str, list[Arg]]]
    calls = [("ff-render", [media.clip, copy, f"{copy}-out", *RENDER_ARGS]) for _, copy in copies[::2]]
    for (name, copy), result in zip(copies[::2], run_all(calls), strict=True):
        assert_clean_failure(
            result, EXIT_BUNDLE, str(copy / name), "sha256 differs" if name != MANIFEST else "tampered"
        )
    # --no-verify skips the sha256 (sizes, headers and footers are still checked): damage is then
    # met while reading, if at all. A clean refusal or a finished render, never a traceback.
    calls = [("ff-render", [media.clip, copy, f"{copy}-nv", *RENDER_ARGS, "--no-verify"]) for _, copy in copies]
    for (name, copy), result in zip(copies, run_all(calls), strict=True):
        if name == MANIFEST or result.returncode != 0:
            assert_clean_failure(result, EXIT_BUNDLE, str(copy / name))


def test_ff_render_never_reads_outside_the_pool_of_a_sealed_malicious_bundle(
    media: RenderMedia, tmp_path: Path
) -> None:
    """Every row of images.parquet points to '../outside/<its file>', where a copy of that very file
    waits: a render that followed the paths would show the pool's pictures. It must show none."""
    opened = open_bundle(media.bundle)
    names = opened.relative_paths(list(range(opened.count)))
    shutil.copytree(media.pool, media.pool.parent / "outside", dirs_exist_ok=True)
    forged = forge_image_paths(
        media.bundle, tmp_path / "forged", {i: os.fsencode(f"../outside/{name}") for i, name in enumerate(names)}
    )
    out = tmp_path / "out"
    result = run("ff-render", [media.clip, forged, out, *RENDER_ARGS])
    assert "Traceback" not in result.stderr
    if result.returncode == 0:
        assert "outside_pool" in result.stderr
        results = json.loads((out / "results.json").read_text())
        assert results["output"]["missing_images"] == len({f["image_id"] for f in results["frames"]})
        for frame in decoded_frames(out / "clip_matched.mp4"):
            assert abs(float(frame.mean()) - BACKGROUND_GREY) < 2 and float(frame.std()) < 2
    else:
        assert_clean_failure(result, EXIT_BUNDLE, "outside")
