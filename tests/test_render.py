"""ff-render end to end: real bundles from skimage pictures, real H.264 videos made with PyAV.

Everything goes through the real command line (click's CliRunner) or, for kill -9,
through a real child process. The pool is 48 JPEGs, the clip 60 frames at 320x180.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fluxframe_render.checkpoint import CHECKPOINT_NAME, FRAME_INPUT_KEY, Header
from fluxframe_render.lock import LOCK_NAME
from shared.errors import EXIT_BUNDLE, EXIT_INPUT, EXIT_STATE, EXIT_USAGE
from tests.media import describe_video, make_test_video, skimage_images
from tests.pools import DEGRADATIONS, decode_bytes, degrade, pool_images
from tests.render_support import (
    CLIP_FPS,
    POOL_SIZE,
    Media,
    assert_one_line_error,
    build_small_bundle,
    choices_record,
    image_ids,
    make_media,
    picks,
    results,
    run_cli,
)

REPO = Path(__file__).resolve().parents[1]
# Each frame alone, the photo untouched: what the tests of per-frame selection and of the pictures themselves need.
PER_FRAME = ("--coherence", "off", "--color-transfer", "off")
# The installed console script: the real command a user runs.
FF_RENDER = Path(sys.executable).parent / "ff-render"


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("render-media"))


@pytest.fixture(scope="module")
def full_render(media: Media, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete render with samples, shared by the tests that only inspect its output."""
    out = tmp_path_factory.mktemp("full") / "out"
    run = run_cli(
        media.clip, media.bundle, out, *PER_FRAME, "--seed", "3", "--save-samples", "3", "--sample-interval", "20"
    )
    assert run.code == 0, run.stderr
    return out


def test_output_video_frames_audio_and_files(media: Media, full_render: Path) -> None:
    out = full_render
    facts = describe_video(out / "clip_matched.mp4")
    source = describe_video(media.clip)
    assert (facts.video_codec, facts.pix_fmt) == ("h264", "yuv420p")
    assert (facts.width, facts.height) == (320, 180)
    assert facts.frames == media.frames
    assert facts.fps == pytest.approx(CLIP_FPS)
    assert facts.video_seconds == pytest.approx(source.video_seconds, abs=1 / CLIP_FPS)
    assert facts.audio_codec == "aac"
    assert facts.audio_seconds == pytest.approx(source.video_seconds, abs=0.05)
    frames = sorted(p.name for p in (out / "matched_frames").iterdir())
    assert frames == [f"frame_{i:06d}.jpg" for i in range(media.frames)]
    samples = sorted(p.name for p in (out / "comparison_samples").iterdir())
    assert samples == ["sample_000000.jpg", "sample_000020.jpg", "sample_000040.jpg"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp or lock file is left behind"
    data = results(out)
    assert data["bundle_id"] == json.loads((media.bundle / "manifest.json").read_text())["bundle_id"]
    assert data["counts"]["frames"] == media.frames and data["seed"] == 3
    assert data["output"]["video"] == "clip_matched.mp4" and data["output"]["audio"] in ("copy", "aac")
    first = data["frames"][0]
    assert set(first) == {
        "index",
        "source_index",
        "time",
        "image_id",
        "path",
        "score",
        "threshold_applied",
        "fallback",
        "cut",
        "ssim",
        "delta_e",
        "delta_e_fine",
    }
    assert first["cut"], "a scene starts at frame 0"
    look = data["quality"]
    assert look["frames"] == media.frames and 0 < look["mean_delta_e"] < 100 and -1 <= look["mean_ssim"] <= 1
    assert look["mean_ssim"] == pytest.approx(np.mean([f["ssim"] for f in data["frames"]]), abs=1e-3)
    assert data["output"]["report"] == "report.html" and (out / "report.html").stat().st_size > 10_000
    assert [f["index"] for f in data["frames"]] == list(range(media.frames))
    assert all((media.pool / f["path"]).is_file() for f in data["frames"])
    assert (out / CHECKPOINT_NAME).is_file()


def test_matched_frames_are_the_pool_images_at_video_size(media: Media, full_render: Path) -> None:
    import cv2

    data = results(full_render)
    frame = data["frames"][7]
    written = decode_bytes((full_render / "matched_frames" / "frame_000007.jpg").read_bytes())
    original = decode_bytes((media.pool / frame["path"]).read_bytes())
    assert written.shape == (180, 320, 3)
    h, w = original.shape[:2]
    # Centre crop to 16:9, resized: the reference is made independently of the code under test.
    ch = min(h, round(w * 9 / 16))
    cw = min(w, round(ch * 16 / 9))
    crop = original[(h - ch) // 2 : (h - ch) // 2 + ch, (w - cw) // 2 : (w - cw) // 2 + cw]
    reference = cv2.resize(crop, (320, 180), interpolation=cv2.INTER_AREA)
    assert float(np.abs(written.astype(int) - reference.astype(int)).mean()) < 6


def test_fps_override_keeps_duration(media: Media, tmp_path: Path) -> None:
    run = run_cli(
        media.clip, media.bundle, tmp_path, "--fps-override", "5", "--no-frames", *PER_FRAME, "--seed", "1", "--quiet"
    )
    assert run.code == 0, run.stderr
    facts = describe_video(tmp_path / "clip_matched.mp4")
    assert facts.frames == 20 and facts.fps == pytest.approx(5)
    assert facts.video_seconds == pytest.approx(4.0, abs=0.2)
    assert facts.audio_seconds == pytest.approx(4.0, abs=0.1)
    assert not (tmp_path / "matched_frames").exists()
    sources = [f["source_index"] for f in results(tmp_path)["frames"]]
    assert sources == list(range(0, 60, 3))


def test_no_repeat_has_zero_duplicates(media: Media, tmp_path: Path) -> None:
    run = run_cli(
        media.clip, media.bundle, tmp_path, *PER_FRAME, "--no-repeat", "--fps-override", "11", "--skip-output"
    )
    assert run.code == 0, run.stderr
    ids = image_ids(tmp_path)
    assert len(ids) == 44 and len(set(ids)) == 44
    assert results(tmp_path)["counts"]["repeats"] == 0
    assert "0 repeats" in run.stdout
    # Every frame got the best image the frames before it had left: the first frame its overall best.
    assert results(tmp_path)["frames"][0]["score"] >= max(f["score"] for f in results(tmp_path)["frames"][1:4]) - 0.2


def test_no_repeat_that_would_exhaust_the_pool_fails_before_rendering(media: Media, tmp_path: Path) -> None:
    run = run_cli(media.clip, media.bundle, tmp_path, "--no-repeat", "--quiet")
    assert_one_line_error(run, EXIT_USAGE, "60 frames", f"only {POOL_SIZE} images")
    assert not (tmp_path / "clip_matched.mp4").exists()


def test_same_seed_same_results_other_seed_differs(media: Media, tmp_path: Path) -> None:
    runs = {}
    for name, seed in (("a", "11"), ("b", "11"), ("c", "12")):
        run = run_cli(media.clip, media.bundle, tmp_path / name, *PER_FRAME, "--seed", seed, "--skip-output", "--quiet")
        assert run.code == 0, run.stderr
        runs[name] = results(tmp_path / name)["frames"]
    assert runs["a"] == runs["b"]
    assert [f["image_id"] for f in runs["a"]] != [f["image_id"] for f in runs["c"]]


def test_threshold_holds_previous_image(media: Media, tmp_path: Path) -> None:
    run = run_cli(
        media.clip, media.bundle, tmp_path, *PER_FRAME, "--threshold", "1", "--seed", "1", "--skip-output", "--quiet"
    )
    assert run.code == 0, run.stderr
    frames = results(tmp_path)["frames"]
    assert frames[0]["fallback"] == "first_below_threshold" and frames[0]["threshold_applied"]
    assert all(f["fallback"] == "held" and f["threshold_applied"] for f in frames[1:])
    assert {f["image_id"] for f in frames} == {frames[0]["image_id"]}
    counts = results(tmp_path)["counts"]
    assert counts["held"] == 59 and counts["repeats"] == 0
    # A threshold under every score changes nothing.
    low = tmp_path / "low"
    assert (
        run_cli(media.clip, media.bundle, low, *PER_FRAME, "--threshold", "0.01", "--seed", "1", "--skip-output").code
        == 0
    )
    assert not any(f["threshold_applied"] for f in results(low)["frames"])


def test_demo_limits_seconds_and_images(media: Media, tmp_path: Path) -> None:
    run = run_cli(
        media.clip, media.bundle, tmp_path, "--demo", "--demo-seconds", "1", "--demo-images", "16", "--no-repeat",
        "--no-frames", "--quiet", *PER_FRAME,
    )  # fmt: skip
    assert run.code == 0, run.stderr
    ids = image_ids(tmp_path)
    assert len(ids) == 15 and len(set(ids)) == 15 and max(ids) < 16
    facts = describe_video(tmp_path / "clip_matched.mp4")
    assert facts.frames == 15 and facts.audio_seconds == pytest.approx(1.0, abs=0.05)


def test_mismatch_warnings_print_once(media: Media, tmp_path: Path) -> None:
    square = make_test_video(tmp_path / "square.mp4", skimage_images()[:1], fps=CLIP_FPS, size=(240, 240), audio=False)
    run = run_cli(square, media.bundle, tmp_path / "out", "--fps-override", "60", "--no-frames", "--quiet")
    assert run.code == 0, run.stderr
    facts = describe_video(tmp_path / "out" / "square_matched.mp4")
    assert (facts.width, facts.height, facts.frames, facts.audio_codec) == (240, 240, 15, None)
    warnings = [line for line in run.stderr.splitlines() if line.startswith("ff-render: warning:")]
    assert len(warnings) == 2, warnings
    assert "1:1 (240x240)" in warnings[0] and "16:9" in warnings[0]
    assert "--fps-override 60" in warnings[1] and "15 fps" in warnings[1]
    assert results(tmp_path / "out")["output"]["fps"] == pytest.approx(CLIP_FPS)


def test_changed_options_win_and_earlier_matches_come_back(media: Media, tmp_path: Path) -> None:
    """Trying settings: new match options match again (one line says so), the old matches are kept and return."""
    assert run_cli(media.clip, media.bundle, tmp_path, *PER_FRAME, "--seed", "1", "--skip-output", "--quiet").code == 0
    checkpoint = (tmp_path / CHECKPOINT_NAME).read_bytes()
    matched = picks(tmp_path)

    changed = run_cli(
        media.clip, media.bundle, tmp_path, *PER_FRAME, "--seed", "2", "--search-depth", "4", "--skip-output"
    )
    assert changed.code == 0, changed.stderr
    warnings = [line for line in changed.stderr.splitlines() if line.startswith("ff-render: warning:")]
    assert len(warnings) == 1 and "seed 1 -> 2" in warnings[0] and "search_depth 10 -> 4" in warnings[0]
    assert "k 10" not in warnings[0], "internal values are not named"
    assert "60 frames matched before are kept" in warnings[0]
    assert results(tmp_path)["seed"] == 2 and "60 from checkpoint" not in changed.stdout

    # Back to the first options: their matches come back, nothing is matched again.
    back = run_cli(media.clip, media.bundle, tmp_path, *PER_FRAME, "--seed", "1", "--crf", "30", "--no-frames")
    assert back.code == 0, back.stderr
    assert "resuming the 60 frames kept for these options" in back.stderr
    assert "60 from checkpoint" in back.stdout
    assert (tmp_path / CHECKPOINT_NAME).read_bytes().startswith(checkpoint)
    assert picks(tmp_path) == matched
    assert describe_video(tmp_path / "clip_matched.mp4").frames == 60

    # Output options only: no matching, no warning, same choices.
    rerender = run_cli(media.clip, media.bundle, tmp_path, *PER_FRAME, "--seed", "1", "--crf", "28", "--skip-output")
    assert rerender.code == 0 and "warning" not in rerender.stderr and "60 from checkpoint" in rerender.stdout
    assert picks(tmp_path) == matched

    # Dropping --seed after a seeded run resumes with the seed in the checkpoint.
    unseeded = run_cli(media.clip, media.bundle, tmp_path, *PER_FRAME, "--skip-output")
    assert unseeded.code == 0 and "warning" not in unseeded.stderr and "60 from checkpoint" in unseeded.stdout
    assert results(tmp_path)["seed"] == 1

    restarted = run_cli(
        media.clip, media.bundle, tmp_path, *PER_FRAME, "--seed", "1", "--restart", "--skip-output", "--quiet"
    )
    assert restarted.code == 0, restarted.stderr
    assert picks(tmp_path) == matched  # matched again from scratch: the same picks


def test_matches_an_older_fluxframe_read_from_other_frames_are_made_again_not_resumed(
    media: Media, tmp_path: Path
) -> None:
    """A checkpoint whose frames were decoded the way an earlier version did (no frame_input, or
    another) is set aside and matched again: resuming it would mix choices made from other pictures."""
    first = run_cli(media.clip, media.bundle, tmp_path, "--skip-output", "--quiet")
    assert first.code == 0, first.stderr
    fresh = picks(tmp_path)
    checkpoint = tmp_path / CHECKPOINT_NAME
    lines = checkpoint.read_text().splitlines()
    header = Header.from_dict(json.loads(lines[0]))
    options = {k: v for k, v in header.match_options.items() if k != FRAME_INPUT_KEY}  # as version 1 wrote it
    old = Header(header.bundle_id, header.video, options, header.seed)
    # Its frames all chose image 0, so that resuming them would show.
    frames = [json.loads(line) for line in lines[1:]]
    for record in frames:
        for frame in record["frames"] if record["type"] == "frames" else []:
            frame["image_id"] = 0
    checkpoint.write_text("\n".join(json.dumps(x) for x in [old.to_dict(), *frames]) + "\n")

    again = run_cli(media.clip, media.bundle, tmp_path, "--skip-output")
    assert again.code == 0, again.stderr
    assert "frames read for matching by another FluxFrame version (null -> 2)" in again.stderr
    assert "matching again" in again.stderr
    assert picks(tmp_path) == fresh


# Both are scaled to the 256x144 comparison size as they are decoded (match.decode_size): 320x180 a little, 1280x720 5x.
@pytest.mark.parametrize("size", [(320, 180), (1280, 720)])
def test_copy_detection_recall_through_ff_render(media: Media, tmp_path: Path, size: tuple[int, int]) -> None:
    """A video of degraded pool pictures: ff-render must find each one's original (recall@1 >= 0.9)."""
    rng = np.random.default_rng(5)
    originals = pool_images(POOL_SIZE, max_side=640)
    picked = [int(i) for i in rng.choice(POOL_SIZE, size=24, replace=False)]
    degraded = [degrade(originals[i], DEGRADATIONS[n % len(DEGRADATIONS)], rng) for n, i in enumerate(picked)]
    video = make_test_video(
        tmp_path / "copies.mp4", degraded, fps=5, seconds_per_image=0.2, size=size, audio=False, motion=False
    )
    run = run_cli(video, media.bundle, tmp_path / "out", "--search-depth", "1", "--skip-output", "--quiet")
    assert run.code == 0, run.stderr
    paths = [f["path"] for f in results(tmp_path / "out")["frames"]]
    expected = [f"img-{i:05d}.jpg" for i in picked]
    assert len(paths) == len(expected)
    recall = sum(p == e for p, e in zip(paths, expected, strict=True)) / len(expected)
    assert recall >= 0.9, list(zip(paths, expected, strict=True))


def test_ivf_bundle_no_repeat_and_nprobe(media: Media, tmp_path: Path) -> None:
    """IVF search with used ids excluded runs its lists dry (4 lists, nprobe 1): widening, then exact."""
    bundle = build_small_bundle(media.pool, tmp_path / "ivf", index_kind="ivf", nlist=4)
    # A child process: a crash inside FAISS fails this test instead of killing the test run.
    args = [media.clip, bundle, tmp_path / "out", "--no-repeat", "--nprobe", "1", "--fps-override", "11", *PER_FRAME]
    run = subprocess.run([str(FF_RENDER), *map(str, args), "--skip-output"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, (run.returncode, run.stderr)
    summary = run.stdout.strip().splitlines()[-1]
    assert re.search(r", IVF widened \d+ / exact [1-9]\d* searches,", summary), summary
    ids = image_ids(tmp_path / "out")
    assert len(ids) == 44 and len(set(ids)) == 44
    assert results(tmp_path / "out")["match_options"]["nprobe"] == 1


def test_ivf_no_repeat_resumed_mid_batch_equals_uninterrupted(media: Media, tmp_path: Path) -> None:
    """Frames whose IVF lists ran dry are searched again alone: a run resumed mid-batch picks the same."""
    from fluxframe_render.render import RenderOptions, render

    bundle = build_small_bundle(media.pool, tmp_path / "ivf", index_kind="ivf", nlist=4)
    settings: dict[str, object] = {"no_repeat": True, "nprobe": 1, "search_depth": 2, "fps_override": 11.0}
    settings.update(coherence="off")
    settings.update(match_batch=16, checkpoint_batch=1, skip_output=True)
    options = RenderOptions(**settings)  # type: ignore[arg-type]
    reference = render(media.clip, bundle, tmp_path / "reference", options)
    assert reference.search_stats["exact_fallback_rows"] > 0  # lists ran dry: frames were searched again
    ids = image_ids(tmp_path / "reference")
    assert len(ids) == len(set(ids)) == 44

    out = tmp_path / "resumed"
    out.mkdir()
    lines = (tmp_path / "reference" / CHECKPOINT_NAME).read_text().splitlines(keepends=True)
    (out / CHECKPOINT_NAME).write_text("".join(lines[: 1 + 36]))  # header + 36 frames: inside the last batch
    resumed = render(media.clip, bundle, out, options)
    assert resumed.resumed_frames == 36
    assert choices_record(out) == choices_record(tmp_path / "reference")


def test_moved_pool_needs_pool_root(media: Media, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(media.pool, pool)
    bundle = build_small_bundle(pool, tmp_path / "bundle")
    moved = pool.rename(tmp_path / "moved")
    run = run_cli(media.clip, bundle, tmp_path / "out", *PER_FRAME, "--seed", "1", "--no-frames", "--quiet")
    assert_one_line_error(run, EXIT_INPUT, "--pool-root")
    again = run_cli(
        media.clip, bundle, tmp_path / "out", *PER_FRAME, "--seed", "1", "--no-frames", "--pool-root", moved
    )
    assert again.code == 0, again.stderr
    assert describe_video(tmp_path / "out" / "clip_matched.mp4").frames == 60
    # One matched picture vanishes: its frames show grey, the render goes on and says so once.
    (moved / results(tmp_path / "out")["frames"][0]["path"]).unlink()
    grey = run_cli(
        media.clip, bundle, tmp_path / "out", *PER_FRAME, "--seed", "1", "--no-frames", "--pool-root", moved, "--quiet"
    )
    assert grey.code == 0, grey.stderr
    warnings = [line for line in grey.stderr.splitlines() if "could not be read" in line]
    assert len(warnings) == 1 and "1 matched image(s)" in warnings[0]
    assert results(tmp_path / "out")["output"]["missing_images"] == 1


# -- bad input: one line, the right exit code, no traceback --------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--threshold", "1.5"], EXIT_USAGE, "--threshold"),
        (["--threshold", "-0.1"], EXIT_USAGE, "--threshold"),
        (["--search-depth", "0"], EXIT_USAGE, "--search-depth"),
        (["--fps-override", "0"], EXIT_USAGE, "--fps-override"),
        (["--fps-override", "-5"], EXIT_USAGE, "--fps-override"),
        (["--crf", "60"], EXIT_USAGE, "--crf"),
        (["--bogus"], EXIT_USAGE, "--bogus"),
    ],
)
def test_bad_options(media: Media, tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    assert_one_line_error(run_cli(media.clip, media.bundle, tmp_path, *args), code, needle)


def test_bad_videos(media: Media, tmp_path: Path) -> None:
    assert_one_line_error(run_cli(tmp_path / "nope.mp4", media.bundle, tmp_path / "o1"), EXIT_INPUT, "not found")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    assert_one_line_error(run_cli(text, media.bundle, tmp_path / "o2"), EXIT_INPUT, "not a video")
    assert_one_line_error(run_cli(tmp_path, media.bundle, tmp_path / "o3"), EXIT_USAGE)


def test_truncated_video_renders_what_decodes(media: Media, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    data = media.clip.read_bytes()
    cut.write_bytes(data[: len(data) * 55 // 100])
    run = run_cli(cut, media.bundle, tmp_path / "out", *PER_FRAME, "--seed", "1", "--no-frames", "--quiet")
    assert run.code == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "ends early" in line]
    assert len(warnings) == 1
    frames = results(tmp_path / "out")["counts"]["frames"]
    assert 10 < frames < 60 and f"{frames} of the 60 frames" in warnings[0]
    assert results(tmp_path / "out")["counts"]["truncated"]
    assert describe_video(tmp_path / "out" / "cut_matched.mp4").frames == frames


def test_bad_bundles(media: Media, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_cli(media.clip, empty, tmp_path / "o1"), EXIT_BUNDLE, "not a FluxFrame bundle")
    assert_one_line_error(run_cli(media.clip, tmp_path / "none", tmp_path / "o2"), EXIT_BUNDLE, "no such bundle")

    tampered = shutil.copytree(media.bundle, tmp_path / "tampered")
    vectors = tampered / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[-5] ^= 0x40
    vectors.write_bytes(bytes(data))
    assert_one_line_error(run_cli(media.clip, tampered, tmp_path / "o3"), EXIT_BUNDLE, "vectors.npy", "sha256")

    future = shutil.copytree(media.bundle, tmp_path / "future")
    manifest = json.loads((future / "manifest.json").read_text())
    manifest["format_version"] = 99
    (future / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli(media.clip, future, tmp_path / "o4"), EXIT_BUNDLE, "format version 99")


# -- concurrency and crashes ----------------------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from pathlib import Path
from fluxframe_render.lock import OutputLock
lock = OutputLock(Path(sys.argv[1]))
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_second_render_into_same_out_refuses_then_takes_over_a_dead_lock(media: Media, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        refused = run_cli(media.clip, media.bundle, out, "--skip-output", "--quiet")
        assert_one_line_error(refused, EXIT_STATE, "in use by ff-render pid", str(holder.pid))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists(), "kill -9 leaves the lock file behind"
    taken = run_cli(media.clip, media.bundle, out, "--skip-output", "--quiet", *PER_FRAME, "--seed", "1")
    assert taken.code == 0, taken.stderr
    assert not (out / LOCK_NAME).exists()


_RENDER_API = """
import json, sys
from pathlib import Path
from fluxframe_render.render import RenderOptions, render
video, bundle, out, options = sys.argv[1:5]
render(Path(video), Path(bundle), Path(out), RenderOptions(**json.loads(options)))
"""


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _kill_when(process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float = 60) -> bool:
    """SIGKILL ``process`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.002)
    process.kill()
    raise AssertionError("the child never reached the kill point")


@pytest.mark.parametrize(
    ("options", "kill_after_lines"),
    [
        ({"seed": 4, "threshold": 0.72, "search_depth": 5, "coherence": "off"}, 3),
        ({"no_repeat": True, "fps_override": 11.0, "coherence": "off"}, 6),
        ({"coherence": "hold", "hold_margin": 0.01, "max_uses": 2, "min_reuse_gap": 4}, 6),
        ({"coherence": "smooth", "switch_cost": 0.01, "max_uses": 2, "min_reuse_gap": 4, "match_batch": 4}, 2),
        ({"tiles": "8x6", "tile_max_uses": 3, "tile_distance": 2}, 4),
    ],
    ids=["random-threshold", "no-repeat", "hold-reuse", "smooth-reuse", "tiles"],
)
def test_kill_9_while_matching_then_resume_equals_uninterrupted(
    media: Media, tmp_path: Path, options: dict[str, object], kill_after_lines: int
) -> None:
    from fluxframe_render.render import RenderOptions, render

    options = {"match_batch": 8, **options, "checkpoint_batch": 2, "skip_output": True}
    reference = tmp_path / "reference"
    render(media.clip, media.bundle, reference, RenderOptions(**options))  # type: ignore[arg-type]

    out = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", _RENDER_API, str(media.clip), str(media.bundle), str(out), json.dumps(options)],
        cwd=REPO,
    )
    checkpoint = out / CHECKPOINT_NAME
    killed = _kill_when(child, lambda: len(_lines(checkpoint)) >= 1 + kill_after_lines)
    assert killed, "the child finished before the kill point"
    lines = _lines(checkpoint)
    assert '"type":"end"' not in "".join(lines), "killed while still matching"
    resumed = render(media.clip, media.bundle, out, RenderOptions(**options))  # type: ignore[arg-type]
    assert resumed.resumed_frames >= 2 * kill_after_lines
    assert choices_record(out) == choices_record(reference)


def test_kill_9_while_encoding_then_rerun_finishes_cleanly(media: Media, full_render: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [str(media.clip), str(media.bundle), str(out), *PER_FRAME, "--seed", "3"]
    args += ["--save-samples", "3", "--sample-interval", "20"]
    child = subprocess.Popen([str(FF_RENDER), *args, "--quiet"], cwd=REPO)
    partial = out / ".clip_matched.partial.mp4"

    def encoding() -> bool:
        try:
            return partial.stat().st_size > 0
        except FileNotFoundError:
            return False

    killed = _kill_when(child, encoding)
    assert killed, "the child finished before the kill point"
    assert not (out / "clip_matched.mp4").exists() and not (out / "results.json").exists()
    rerun = run_cli(*args, "--quiet")
    assert rerun.code == 0, rerun.stderr
    assert not partial.exists()
    assert results(out)["frames"] == results(full_render)["frames"]
    assert describe_video(out / "clip_matched.mp4").frames == 60
    assert os.listdir(out / "matched_frames") and len(os.listdir(out / "matched_frames")) == 60


def test_ctrl_c_keeps_progress_and_debug_shows_traceback(media: Media, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [
        str(media.clip),
        str(media.bundle),
        str(out),
        *PER_FRAME,
        "--seed",
        "2",
        "--checkpoint-batch",
        "1",
        "--quiet",
    ]
    child = subprocess.Popen([str(FF_RENDER), *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    checkpoint = out / CHECKPOINT_NAME
    deadline = time.monotonic() + 60
    while len(_lines(checkpoint)) < 2 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    if child.returncode == 0:
        pytest.skip("the render finished before Ctrl-C arrived")
    assert child.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "ff-render: interrupted; finished work is kept, rerun the same command to resume"
    ]
    rerun = run_cli(*args[:-1])
    assert rerun.code == 0 and "from checkpoint" in rerun.stdout, rerun.stderr

    debug = run_cli(media.clip, tmp_path / "no-bundle", tmp_path / "o", "--debug")
    assert debug.code == EXIT_BUNDLE
    assert "Traceback" in debug.stderr and debug.stderr.strip().splitlines()[-1].startswith("ff-render: error:")


def test_two_renders_share_one_bundle_side_by_side(media: Media, tmp_path: Path) -> None:
    args = [*PER_FRAME, "--seed", "5", "--skip-output", "--quiet"]
    children = [
        subprocess.Popen([str(FF_RENDER), str(media.clip), str(media.bundle), str(tmp_path / name), *args], cwd=REPO)
        for name in ("a", "b")
    ]
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    assert results(tmp_path / "a")["frames"] == results(tmp_path / "b")["frames"]


@pytest.mark.parametrize("coherence", ["off", "hold", "smooth"])
def test_reuse_rules_hold_in_every_coherence_mode(media: Media, tmp_path: Path, coherence: str) -> None:
    """60 frames from 48 images with at most 2 uses each and 6 frames between: zero violations, each mode."""
    from fluxframe_render.reuse import ReuseRules, violations

    run = run_cli(
        media.clip,
        media.bundle,
        tmp_path,
        "--coherence",
        coherence,
        "--max-uses",
        "2",
        "--min-reuse-gap",
        "6",
        "--skip-output",
        "--quiet",
    )
    assert run.code == 0, run.stderr
    ids = image_ids(tmp_path)
    assert len(ids) == media.frames
    assert violations(ReuseRules(max_uses=2, min_gap=6), ids) == []
    runs = 1 + sum(a != b for a, b in itertools.pairwise(ids))
    assert runs >= 4, "the rules were exercised across scenes"
    assert results(tmp_path)["match_options"]["coherence"] == coherence


def test_tiles_build_each_frame_from_the_atlas_and_rerender_without_matching(
    media: Media, full_render: Path, tmp_path: Path
) -> None:
    from fluxframe_render.tile_record import TILE_GRIDS

    out = tmp_path / "out"
    run = run_cli(media.clip, media.bundle, out, "--tiles", "8x6", "--color-transfer", "off", "--quiet")
    assert run.code == 0, run.stderr
    assert "8x6 tiles from" in run.stdout
    # The summary's look figures leave out frame-level switches: a frame names only its most used tile.
    assert "look: SSIM" in run.stdout and " images, score" not in run.stdout
    grids = np.load(out / TILE_GRIDS, allow_pickle=False)
    assert grids.shape == (media.frames, 6, 8) and grids.dtype == np.int32
    data = results(out)
    assert data["tiles"]["grid"] == "8x6" and data["tiles"]["distinct_images"] == len(np.unique(grids)) > 1
    # The most used tiles over every cell of the clip, most cells first, in results.json and the report.
    most_used = data["tiles"]["most_used"]
    cells = np.bincount(grids.ravel())
    assert [u["cells"] for u in most_used] == sorted(cells[cells > 0], reverse=True)[: len(most_used)]
    assert all(cells[u["image_id"]] == u["cells"] for u in most_used)
    assert most_used[0]["path"] in (out / "report.html").read_text()  # named as full-frame totals name them
    report = (out / "report.html").read_text()
    assert "8x6 (48 cells)" in report and "distinct tiles" in report and "image switches" not in report
    assert data["match_options"]["tiles"] == "8x6"
    # The output is the atlas tiles themselves, each resized to its cell: frame 7's top-left cell.
    from shared.bundle import open_bundle

    atlas = open_bundle(media.bundle).atlas
    frame = decode_bytes((out / "matched_frames" / "frame_000007.jpg").read_bytes())
    cell = frame[: 180 // 6, : 320 // 8].astype(int)
    import cv2

    expected = cv2.resize(np.asarray(atlas[grids[7, 0, 0]]), (320 // 8, 180 // 6), interpolation=cv2.INTER_LINEAR)
    assert np.abs(cell - expected.astype(int)).mean() < 12  # JPEG of the frame
    # A mosaic follows its frame far closer than one photo does (the same clip, one photo per frame).
    one_photo = results(full_render)["quality"]
    assert data["quality"]["mean_delta_e"] < one_photo["mean_delta_e"] / 2
    # SSIM: 1.8x. It was 0.2405 vs 0.1125 (2.14x) with feature code 2; code 3's features find a closer
    # single photo (0.1207) while the mosaic stays at 0.239 (1.98x), so the 2x margin was the baseline's.
    assert data["quality"]["mean_ssim"] > 1.8 * one_photo["mean_ssim"]
    # Output options only: no matching, the same grids.
    before = (out / TILE_GRIDS).read_bytes()
    again = run_cli(media.clip, media.bundle, out, "--tiles", "8x6", "--tile-color-strength", "0.5", "--no-frames")
    assert again.code == 0 and "60 from checkpoint" in again.stdout, again.stderr
    assert (out / TILE_GRIDS).read_bytes() == before


def test_tile_reuse_rules_hold_in_every_frame(media: Media, tmp_path: Path) -> None:
    run = run_cli(
        media.clip, media.bundle, tmp_path, "--tiles", "8x6", "--tile-max-uses", "2", "--tile-distance", "3",
        "--skip-output", "--quiet",
    )  # fmt: skip
    assert run.code == 0, run.stderr
    grids = np.load(tmp_path / "tiles.npy", allow_pickle=False)
    for grid in grids:
        ids, counts = np.unique(grid, return_counts=True)
        assert counts.max() <= 2
        for image in ids[counts > 1]:
            (r1, r2), (c1, c2) = np.nonzero(grid == image)
            assert max(abs(r1 - r2), abs(c1 - c2)) >= 3


def test_tiles_on_a_bundle_without_tile_data_is_one_line(media: Media, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    from fluxframe_index.build import BuildOptions, build_bundle
    from shared.spec import FeatureSpec

    build_bundle(media.pool, bare, BuildOptions(spec=FeatureSpec(method="canny"), tile_size=None))
    run = run_cli(media.clip, bare, tmp_path / "out", "--tiles", "32x18", "--quiet")
    assert_one_line_error(run, EXIT_BUNDLE, "no tile data", "--update")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", [(), ("--tiles", "8x6")], ids=["full-frame", "tiles"])
def test_output_made_beside_matching_equals_output_made_from_the_finished_checkpoint(
    media: Media, tmp_path: Path, mode: tuple[str, ...]
) -> None:
    """The first run writes output while it matches (the output phase reads committed choices as
    they come); the second finds the checkpoint complete and writes output alone. Same bytes."""
    out = tmp_path / "out"
    args: tuple[str | Path, ...] = (media.clip, media.bundle, out, *mode, "--checkpoint-batch", "3", "--quiet")
    first = run_cli(*args)
    assert first.code == 0, first.stderr
    assert "from checkpoint" not in first.stdout
    video = out / "clip_matched.mp4"
    made_beside = video.read_bytes()
    frames = {p.name: p.read_bytes() for p in (out / "matched_frames").iterdir()}
    look = results(out)["quality"]
    assert len(frames) == media.frames
    video.unlink()
    again = run_cli(*args)
    assert again.code == 0 and f"{media.frames} from checkpoint" in again.stdout, again.stderr
    assert video.read_bytes() == made_beside
    assert {p.name: p.read_bytes() for p in (out / "matched_frames").iterdir()} == frames
    assert results(out)["quality"] == look


def test_a_video_of_another_shape_than_the_bundle_is_warned_of_in_full_frame_mode_only(
    media: Media, tmp_path: Path
) -> None:
    """Full frames are centre-cropped to the bundle's aspect for matching; tiles are square whatever it is."""
    video = make_test_video(tmp_path / "four-three.mp4", skimage_images()[:2], fps=5, size=(320, 240), audio=False)
    full = run_cli(video, media.bundle, tmp_path / "full", "--skip-output", "--quiet")
    assert full.code == 0 and "the video is 4:3 (320x240) but the bundle was built for 16:9" in full.stderr
    tiles = run_cli(video, media.bundle, tmp_path / "tiles", "--tiles", "8x6", "--skip-output", "--quiet")
    assert tiles.code == 0 and "warning" not in tiles.stderr, tiles.stderr
