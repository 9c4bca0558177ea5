"""ff-index build over a hostile pool: every file gets its documented outcome, one by one.

The pool (tests/hostile/make_pool.py) is written by code into a temporary folder. The build
goes through the public API so that one file can be deleted after scan_pool() listed it and
before its chunk is decoded (the on_chunk hook fires between chunks, in process, jobs=1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray

from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_index.extract import ChunkStats
from shared.bundle import IMAGES, REJECTED, open_bundle, verify_bundle
from shared.images import BACKGROUND_GREY
from shared.spec import FeatureSpec
from tests.hostile.make_pool import (
    BOMBS,
    HUGE,
    INDEXED,
    SKIPPED,
    STORED_FOR,
    VANISHING,
    Case,
    expected_outcome,
    hostile_cases,
    make_hostile_pool,
    restore_permissions,
    running_as_root,
)
from tests.hostile.procs import FAST_INDEX_ARGS, child_env, run, tool
from tests.hostile.renders import CLIP_FRAMES, RENDER_ARGS, decoded_frames, make_render_media

CHUNK = 4  # several chunks, so the vanishing file (sorted last) is decoded after the first one


@dataclass(frozen=True)
class Built:
    pool: Path
    bundle: Path
    cases: list[Case]
    indexed: dict[str, dict[str, Any]]  # display path -> images.parquet row
    rejected: dict[str, list[dict[str, Any]]]  # display path -> rejected.parquet rows
    vectors: NDArray[np.float32]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("hostile")
    pool = root / "pool"
    cases = make_hostile_pool(pool)
    vanished: list[bool] = []

    def delete_after_first_chunk(stats: ChunkStats) -> None:
        if not vanished:
            (pool / VANISHING).unlink()
            vanished.append(True)

    options = BuildOptions(spec=FeatureSpec(method="canny", comparison_size=64), jobs=1, chunk_size=CHUNK)
    result = build_bundle(pool, root / "bundle", options, on_chunk=delete_after_first_chunk)
    assert vanished, "the build ran in a single chunk: the vanishing file was never deleted mid-build"
    images = pq.read_table(result.bundle / IMAGES).to_pylist()
    rejected: dict[str, list[dict[str, Any]]] = {}
    for row in pq.read_table(result.bundle / REJECTED).to_pylist():
        rejected.setdefault(row["path"], []).append(row)
    bundle = open_bundle(result.bundle)
    yield Built(pool, result.bundle, cases, {r["path"]: r for r in images}, rejected, np.asarray(bundle.vectors))
    restore_permissions(pool)


@pytest.mark.parametrize("case", hostile_cases(), ids=lambda c: repr(c.path))
def test_each_hostile_input_gets_its_documented_outcome(built: Built, case: Case) -> None:
    expected = expected_outcome(case)
    row = built.indexed.get(case.path)
    reasons = [r["reason"] for r in built.rejected.get(case.rejected_path, [])]
    if expected == INDEXED:
        assert row is not None, f"{case.what}: not indexed (rejected as {reasons})"
        assert not reasons
        assert row["raw_path"] == case.raw  # the exact file-system bytes, for ff-render to open
        assert (row["width"], row["height"]) == case.size, f"{case.what}: size as displayed"
        assert len(row["sha256"]) == 64
    elif expected == SKIPPED:
        assert row is None and not reasons
        assert not any(p.startswith(case.path + "/") for p in [*built.indexed, *built.rejected])
    else:
        assert row is None, f"{case.what}: indexed, expected rejection {expected!r}"
        assert reasons == [expected], f"{case.what}: {reasons}"
        assert built.rejected[case.rejected_path][0]["detail"], "a rejection always says why"


def test_the_two_tables_account_for_every_file_exactly_once(built: Built) -> None:
    listed = [
        case.path if expected_outcome(case) == INDEXED else case.rejected_path
        for case in built.cases
        if expected_outcome(case) != SKIPPED
    ]
    seen = list(built.indexed) + [p for p, rows in built.rejected.items() for _ in rows]
    assert sorted(seen) == sorted(listed)
    # The symlink loop is walked once: nothing under loop/again/..., nothing twice.
    assert not any(p.startswith("loop/again") for p in seen)
    ids = sorted(row["id"] for row in built.indexed.values())
    assert ids == list(range(len(ids)))


def test_the_hostile_bundle_is_sound(built: Built) -> None:
    manifest = verify_bundle(built.bundle)
    assert manifest.count == len(built.indexed) == built.vectors.shape[0]
    assert manifest.rejected_count == sum(len(rows) for rows in built.rejected.values())
    assert np.isfinite(built.vectors).all()
    assert np.allclose(np.linalg.norm(built.vectors, axis=1), 1.0, atol=1e-4)


def test_every_exif_orientation_gives_the_upright_picture(built: Built) -> None:
    """Each stored orientation, turned upright, must look like the upright file (and not like the others)."""

    def vector(name: str) -> NDArray[np.float32]:
        return np.asarray(built.vectors[built.indexed[name]["id"]], dtype=np.float32)

    reference = vector("exif-1-upright.jpg")
    others = [vector(p) for p in ("plain.jpg", "plain.png", "UPPER.JPEG", "lossy.webp")]
    baseline = max(float(reference @ o) for o in others)
    for k in sorted(STORED_FOR):
        similarity = float(vector(f"exif-{k}.jpg") @ reference)
        assert similarity > 0.97, f"orientation {k}: cosine {similarity:.3f} to the upright picture"
        assert similarity > baseline + 0.05, f"orientation {k}: {similarity:.3f} vs unrelated {baseline:.3f}"


_BOMB_PROBE = textwrap.dedent(
    """
    import json, re, sys
    from pathlib import Path
    from shared.errors import ImageDecodeError
    from shared.images import decode_image, read_image_bytes

    def peak_kb():
        # VmHWM: the high-water mark of resident memory, so a transient allocation counts too.
        return int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))

    def reset_peak():
        Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: VmHWM := current RSS

    def decode(path, **extra):
        try:
            data = read_image_bytes(Path(path))  # the calls ff-index's workers make, same arguments
            decode_image(data, min_size=(64, 36), aspect=64 / 36, **extra)
            return "decoded"
        except ImageDecodeError as exc:
            return exc.reason

    args = json.loads(sys.argv[1])
    decode(args["warmup"])  # the codec libraries load once, before the measure
    reset_peak()
    start = peak_kb()
    reasons = [decode(p) for p in args["bombs"]]
    bombs_kb = peak_kb() - start
    reset_peak()
    start = peak_kb()
    control = decode(args["control"], max_pixels=10**9)
    print(json.dumps({"reasons": reasons, "bombs_kb": bombs_kb, "control": control, "control_kb": peak_kb() - start}))
    """
)


@pytest.mark.slow
def test_decompression_bombs_and_huge_files_cost_a_few_megabytes(built: Built, tmp_path: Path) -> None:
    """Peak RSS of a fresh process around the decodes (Linux VmHWM, reset just before)."""
    bombs = [built.pool / name for name in BOMBS]
    for path in bombs:
        assert path.stat().st_size < 10_000
    bombs.append(built.pool / HUGE)  # 1 GiB of bytes: refused unread
    # Control: a 3000 x 3000 flat PNG (small file, 27 MB decoded) that the guard lets through here
    # shows the measure does see a decode's memory.
    import cv2

    control = tmp_path / "flat.png"
    ok, encoded = cv2.imencode(".png", np.full((3000, 3000, 3), 200, np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok
    control.write_bytes(encoded.tobytes())
    args = {"warmup": str(built.pool / "plain.png"), "bombs": [str(p) for p in bombs], "control": str(control)}
    probe = subprocess.run(
        [sys.executable, "-c", _BOMB_PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        env=child_env(),
        check=True,
        timeout=60,
    )
    figures = json.loads(probe.stdout)
    assert figures["reasons"] == ["too_large"] * len(bombs)
    assert figures["bombs_kb"] < 4 * 1024, f"bombs raised peak RSS by {figures['bombs_kb']} KB"
    assert figures["control"] == "decoded"
    assert figures["control_kb"] > 20 * 1024, f"the control decode showed only {figures['control_kb']} KB"


# As root, the command line runs without the capabilities that bypass file permissions, so that the
# outcome of an ordinary user (mode-000 files and folders rejected as unreadable) is tested as well.
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_the_command_line_reports_each_rejection_on_one_line(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    cases = make_hostile_pool(pool)
    bundle = tmp_path / "bundle"
    as_user = running_as_root() and shutil.which(UNPRIVILEGED[0]) is not None
    prefix = UNPRIVILEGED if as_user else []
    args = [*prefix, tool("ff-index"), "build", str(pool), str(bundle), "--chunk-size", "8", *map(str, FAST_INDEX_ARGS)]
    try:
        result = subprocess.run(args, capture_output=True, text=True, errors="backslashreplace", env=child_env())
    finally:
        restore_permissions(pool)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    privileged = running_as_root() and not as_user
    # Without the mid-build deletion the vanishing file is an ordinary image here.
    outcomes = {c: expected_outcome(c, privileged) if c.raw != VANISHING.encode() else INDEXED for c in cases}
    expected = {c.rejected_path: o for c, o in outcomes.items() if o not in (INDEXED, SKIPPED)}
    rejected = {row["path"]: row["reason"] for row in pq.read_table(bundle / REJECTED).to_pylist()}
    assert rejected == expected
    indexed = sorted(pq.read_table(bundle / IMAGES).column("path").to_pylist())
    assert indexed == sorted(c.path for c, o in outcomes.items() if o == INDEXED)
    # The first 20 rejections, one line each (a non-UTF-8 name is escaped, never a crash).
    rejected_lines = [line for line in result.stderr.splitlines() if line.startswith("rejected: ")]
    assert len(rejected_lines) == min(20, len(expected))
    for line in rejected_lines:
        assert line.split(": ")[2] in set(expected.values()), line
    summary = result.stdout.strip().splitlines()
    assert len(summary) == 1 and summary[0].startswith(f"indexed {len(indexed)} images, rejected {len(expected)}")
    info = run("ff-index", ["info", bundle])
    assert info.returncode == 0 and "Traceback" not in info.stderr


def spoil(path: Path, kind: int) -> None:
    """Turn an indexed picture into one of six hostile things."""
    data = path.read_bytes()
    path.unlink()
    if kind == 1:
        path.write_bytes(data[:300])  # cut short
    elif kind == 2:
        path.write_bytes(BOMBS["bomb-100000x100000.png"]())
    elif kind == 3:
        path.write_bytes(b"not a picture any more\n")
    elif kind == 4:
        os.mkfifo(path)
    elif kind == 5:
        path.write_bytes(data[:1024])
        os.truncate(path, 1 << 30)  # 1 GiB, sparse
    # kind 0: deleted


def test_a_render_survives_a_pool_that_turned_hostile_after_indexing(tmp_path: Path) -> None:
    """Every indexed file is replaced after indexing (deleted, cut short, a bomb, text, a FIFO, a huge
    sparse file): ff-render shows those frames grey, says how many, and finishes cleanly."""
    media = make_render_media(tmp_path)
    for i, picture in enumerate(sorted(media.pool.iterdir())):
        spoil(picture, i % 6)
    out = tmp_path / "out"
    result = run("ff-render", [media.clip, media.bundle, out, *RENDER_ARGS])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    results = json.loads((out / "results.json").read_text())
    used = {frame["image_id"] for frame in results["frames"]}
    assert results["output"]["missing_images"] == len(used)
    warnings = [line for line in result.stderr.splitlines() if "could not be read and show as grey" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"ff-render: warning: {len(used)} matched image")
    frames = decoded_frames(out / "clip_matched.mp4")
    assert len(frames) == CLIP_FRAMES
    assert all(abs(float(frame.mean()) - BACKGROUND_GREY) < 2 for frame in frames)
