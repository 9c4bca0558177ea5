"""ff-index compare: the methods side by side on a real clip and a real pool, in a real browser; bad input."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result

from fluxframe_index.cli import main
from fluxframe_index.clip_frames import spread_frames
from fluxframe_index.compare import clip_aspect
from fluxframe_index.compare_results import (
    RANDOM_DELTA_E,
    RANDOM_SSIM,
    MethodRun,
    Pick,
    Picture,
    look_score,
    recommend,
)
from fluxframe_index.pool_sample import spread_sample
from fluxframe_index.scan import scan_pool
from shared.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_USAGE
from shared.features.registry import method_info
from shared.quality import Thumbnails, delta_e
from shared.spec import ALL_METHODS
from tests.browser import find_chromium, open_page
from tests.media import make_test_video, rotate_mp4_display, skimage_images
from tests.pools import make_pool, write_jpeg

SCREENSHOT = Path("/tmp/compare.png")
CLIP_SIZE = (320, 180)


def ff_index(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="ff-index")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three still skimage pictures, one second each (astronaut, coffee, chelsea)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    return make_test_video(path, skimage_images()[:3], fps=10, size=CLIP_SIZE, motion=False, audio=False)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    make_pool(root, 60, seed=3, max_side=640, nested=True)
    return root


def test_frames_are_spread_over_the_clip_each_nearest_its_time(clip: Path) -> None:
    frames = list(spread_frames(clip, 3))
    assert [f.position for f in frames] == [0, 1, 2]
    # Targets 0.5, 1.5 and 2.5 s: the middle of each picture's second.
    assert [round(f.time, 1) for f in frames] == [0.5, 1.5, 2.5]
    pictures = [Thumbnails.of(np.asarray(cv2.resize(p, CLIP_SIZE), dtype=np.uint8)) for p in skimage_images()[:3]]
    for frame in frames:
        seen = Thumbnails.of(frame.image)
        distances = [delta_e(seen.lab_coarse, p.lab_coarse) for p in pictures]
        assert int(np.argmin(distances)) == frame.position, distances


def test_frames_of_a_portrait_phone_clip_come_out_upright(clip: Path, tmp_path: Path) -> None:
    turned = rotate_mp4_display(clip, tmp_path / "turned.mp4", 90)
    upright = next(spread_frames(turned, 1)).image
    plain = next(spread_frames(clip, 1)).image
    assert upright.shape == (CLIP_SIZE[0], CLIP_SIZE[1], 3)
    assert np.array_equal(upright, np.rot90(plain, k=-1))


def test_the_sample_is_spread_over_every_folder_and_the_same_each_time(pool: Path) -> None:
    scan = scan_pool(pool)
    sample = spread_sample(scan, 12)
    assert len(sample) == 12 == len(set(sample))
    assert sample == spread_sample(scan_pool(pool), 12)
    assert {e.path.split("/")[0] for e in sample} == {"d0", "d1", "d2", "d3"}
    assert spread_sample(scan, 1000) == scan.entries


def _run(method: str, ssim: float, delta_e_value: float, images_per_second: float) -> MethodRun:
    pick = Pick(0, "a.jpg", 0.5, ssim, delta_e_value, Picture(b"", (1, 1)))
    # A small build's wall time is start-up and writing; worker seconds, the per-image cost, are what scale.
    return MethodRun(
        method,
        8,
        100,
        build_seconds=5.0,
        worker_seconds=100 / images_per_second,
        jobs=1,
        match_seconds=0.01,
        picks=[pick],
    )


def test_the_recommendation_is_the_fastest_build_within_ten_percent_of_the_best_look() -> None:
    runs = [_run("hog", 0.40, 15.0, 50), _run("canny", 0.37, 16.0, 200), _run("spatial_color", 0.30, 30.0, 400)]
    chosen = recommend(runs)
    assert (chosen.method, chosen.best_look) == ("canny", "hog")
    assert "4.0x faster to index (≈42 min vs 2.8 h for 500K images)" in chosen.line
    alone = recommend([_run("hog", 0.40, 15.0, 50), _run("canny", 0.20, 25.0, 200)])
    assert (alone.method, alone.best_look) == ("hog", "hog")
    assert "no other method comes within 10 %" in alone.line


def test_the_look_needs_both_layout_and_colour() -> None:
    # Means measured on this file's clip and pool: spatial_color's picks keep the frames' grey layout
    # best (SSIM 0.61, partly hue-shifted copies) but their colours are far off (ΔE 28.6); canny's
    # are close in colour (ΔE 12.4) with a rougher layout (SSIM 0.38). SSIM alone would pick the first.
    assert look_score(0.384, 12.4) > look_score(0.613, 28.6)
    assert look_score(RANDOM_SSIM, RANDOM_DELTA_E) == 0.0
    assert look_score(1.0, 0.0) == 1.0


def test_clip_aspect_is_small_integers() -> None:
    assert clip_aspect(1920, 1080) == (16, 9)
    assert clip_aspect(854, 480) == (16, 9)
    assert clip_aspect(1080, 1920) == (9, 16)
    assert clip_aspect(640, 480) == (4, 3)


def _ready_methods() -> list[str]:
    """What the command compares by default: every ready method, in the order ff-index lists them in --method."""
    return [name for name in ALL_METHODS if method_info(name).readiness()[0]]


@pytest.mark.slow
def test_the_page_shows_every_method_for_every_frame_in_a_real_browser(clip: Path, pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ff_index("compare", str(clip), str(pool), "--frames", "3", "--out", str(out), "--jobs", "1")
    assert result.exit_code == 0, result.output
    page = out / "compare.html"
    assert result.stdout.splitlines()[-1] == f"open {page}"
    recommended = re.match(r"recommendation: ([a-z_]+): ", result.stdout)
    assert sorted(p.name for p in out.iterdir()) == ["compare.html"], "the work folder must go"
    methods = _ready_methods()
    assert recommended is not None and recommended[1] in methods, result.stdout
    html = page.read_text()
    heads = re.findall(r'<div class="head">([^<]*)</div>', html)
    assert heads == ["frame", "source", *methods]
    # One caption per pick: 3 frames x every method, each with a file of the pool and finite figures.
    captions = re.findall(
        r'<span class="name">([^<]+)</span><br>score ([-\d.]+) · SSIM ([-\d.]+) · ΔE ([-\d.]+)</div>', html
    )
    assert len(captions) == 3 * len(methods)
    for name, *figures in captions:
        assert (pool / name).is_file(), name
        assert all(math.isfinite(float(f)) for f in figures)
    rows = re.findall(r"<tr><td><b[^>]*>([a-z_]+)</b>(.*?)</tr>", html)
    assert [method for method, _ in rows] == heads[2:]
    for _, cells in rows:
        shown = [re.sub(r"<[^>]+>", "", cell).replace(",", "") for cell in re.findall(r"<td>(.*?)</td>", cells)]
        # dims, build img/s, 500K estimate, match ms/frame, score, ΔE, SSIM, look, bar
        dims, rate, estimate, match_ms, *look = shown[:8]
        assert int(dims) > 0 and float(rate) > 0 and float(match_ms) > 0
        assert re.fullmatch(r"[\d.]+ (s|min|h)", estimate), estimate
        assert all(math.isfinite(float(figure)) for figure in look), cells

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with open_page(page, tmp_path / "profile", chromium) as (browser_page, log):
        browser_page.wait_for_load_state("networkidle")
        assert log.console_errors == [] and log.page_errors == []
        thumbs = browser_page.locator("img.thumb")
        assert thumbs.count() == 3 * (1 + len(methods))
        facts = thumbs.evaluate_all(
            "imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.getBoundingClientRect().width])"
        )
        assert all(decoded and width > 50 for decoded, width in facts), facts
        browser_page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert log.requests == [page.resolve().as_uri()] and log.blocked == []
    pixels = cv2.imread(str(SCREENSHOT))
    assert pixels is not None and float(pixels.std()) > 30.0, "the screenshot looks blank"
    saturation = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)[:, :, 1]
    assert float((saturation > 100).mean()) > 0.02, "the thumbnails were not painted"


def _one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ff-index: error: ") and result.stdout == ""
    return lines[0]


def test_a_missing_video_or_one_that_is_not_a_video_is_one_line_and_leaves_nothing(pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a video\n")
    for video, says in ((tmp_path / "nope.mp4", "video not found"), (notes, "not a video")):
        result = ff_index("compare", str(video), str(pool), "--out", str(out))
        assert result.exit_code == EXIT_INPUT
        assert says in _one_error_line(result)
        assert not out.exists()


def test_a_pool_too_small_or_empty_is_one_line_and_leaves_nothing(clip: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    make_pool(small, 4, seed=1, max_side=320)
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, says in ((small, "only 4 image files found"), (empty, "no image files found")):
        out = tmp_path / f"out-{folder.name}"
        result = ff_index("compare", str(clip), str(folder), "--out", str(out))
        assert result.exit_code == EXIT_USAGE
        assert says in _one_error_line(result)
        assert not out.exists()


def test_an_unknown_method_is_one_line_and_leaves_nothing(clip: Path, pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ff_index("compare", str(clip), str(pool), "--methods", "hog,sift", "--out", str(out))
    assert result.exit_code == EXIT_USAGE
    assert "unknown method 'sift'" in _one_error_line(result)
    assert not out.exists()


def test_ctrl_c_is_one_line_exit_130_and_leaves_nothing(clip: Path, pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("ff-index")  # the installed console script, as users run it
    command = [str(script)] if script.exists() else [sys.executable, "-c", "import fluxframe_index.cli as c; c.main()"]
    run = subprocess.Popen(
        [*command, "compare", str(clip), str(pool), "--out", str(out), "--jobs", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, which Ctrl-C in a terminal signals as a whole
    )
    assert run.stderr is not None
    for line in run.stderr:
        if ": indexing " in line:  # the work folder exists: the first bundle is being built
            os.killpg(run.pid, signal.SIGINT)
            break
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == EXIT_INTERRUPTED, stderr
    assert stderr.splitlines() == ["ff-index: compare interrupted; its unfinished output was removed"]
    assert stdout == ""
    assert not out.exists()


def test_a_pool_of_broken_files_fails_in_one_line_and_removes_the_folders_it_made(clip: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    whole = make_pool(tmp_path / "whole", 1, seed=2, max_side=320)[0].read_bytes()
    for i in range(12):
        (broken / f"cut-{i:02d}.jpg").parent.mkdir(exist_ok=True)
        (broken / f"cut-{i:02d}.jpg").write_bytes(whole[: len(whole) // 3])  # a failed copy: only the top third
    result = ff_index("compare", str(clip), str(broken), "--out", str(tmp_path / "new" / "out"), "--jobs", "1")
    assert result.exit_code == EXIT_INPUT
    error = result.stderr.splitlines()[-1]
    assert error == (
        f"ff-index: error: {broken}: none of the 12 sampled image files could be decoded "
        "(`ff-index build` on the pool lists each file's reason)"
    )
    assert result.stdout == ""
    assert not (tmp_path / "new").exists()


def test_a_file_name_that_is_not_utf8_or_is_html_is_shown_safely(clip: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, 11, seed=5, max_side=480)
    # The picture in the middle of the clip (coffee) itself, under a Latin-1 name with markup in it:
    # the one frame matched, from the middle of the clip, picks it.
    name = os.fsdecode(b'<script>"caf\xe9.jpg')
    write_jpeg(pool / name, np.asarray(cv2.resize(skimage_images()[1], CLIP_SIZE), dtype=np.uint8))
    out = tmp_path / "out"
    result = ff_index(
        "compare", str(clip), str(pool), "--frames", "1", "--methods", "canny", "--out", str(out), "--jobs", "1"
    )
    assert result.exit_code == 0, result.output
    html = (out / "compare.html").read_text(encoding="utf-8")
    assert '<span class="name">&lt;script&gt;&quot;caf\ufffd.jpg</span>' in html
    assert "<script>" not in html
