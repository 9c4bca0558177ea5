"""The batch-job make targets, driven through make itself: index, and incremental, parallel renders.

The tests run make on the checkout's Makefile with the tools of the environment running
pytest (``BIN``) and a fresh install stamp (``STAMP``): the checkout is already installed,
and a test must never make make reinstall it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.media import describe_video, make_test_video, skimage_images
from tests.pools import copy_tree, make_pool

ROOT = Path(__file__).resolve().parents[1]
POOL_SIZE = 30
VIDEO_FPS = 10.0
VIDEO_FRAMES = 20  # two pictures, one second each

# slow: every test runs make, which renders whole videos through ff-render.
pytestmark = [pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed"), pytest.mark.slow]


@dataclass(frozen=True)
class Batch:
    """A bundle, a folder of two videos and their rendered outputs, made once per module. Read-only."""

    tools: dict[str, str]  # BIN and STAMP for every make call
    bundle: Path
    videos: Path
    outroot: Path


def run_make(tools: dict[str, str], *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    # A make running pytest (make test) must not hand its flags or jobserver to ours.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")}
    assignments = [f"{name}={value}" for name, value in {**tools, **variables}.items()]
    return subprocess.run(
        ["make", "-C", str(ROOT), "--no-print-directory", *args, *assignments],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    base = tmp_path_factory.mktemp("make-batch")
    stamp = base / "installed"
    stamp.touch()  # newer than pyproject.toml: the install is current
    tools = {"BIN": str(Path(sys.executable).parent), "STAMP": str(stamp)}
    make_pool(base / "pool", POOL_SIZE, seed=3, max_side=640)
    index = run_make(
        tools, "index", POOL=str(base / "pool"), BUNDLE=str(base / "bundle"), INDEX_ARGS="--jobs 1 --quiet"
    )
    assert index.returncode == 0, index.stderr
    assert f"indexed {POOL_SIZE} images" in index.stdout
    videos = base / "videos"
    videos.mkdir()
    pictures = skimage_images()
    make_test_video(videos / "alpha.mp4", pictures[0:2], fps=VIDEO_FPS)
    make_test_video(videos / "beta.mp4", pictures[2:4], fps=VIDEO_FPS)
    outroot = base / "out"
    first = run_make(tools, "-j", "2", "renders", VIDEOS=str(videos), BUNDLE=str(base / "bundle"), OUTROOT=str(outroot))
    assert first.returncode == 0, first.stderr
    return Batch(tools, base / "bundle", videos, outroot)


def private_copy(batch: Batch, tmp_path: Path) -> Batch:
    """The videos and outputs copied with their dates, so make sees them exactly as up to date."""
    return Batch(
        batch.tools,
        batch.bundle,
        copy_tree(batch.videos, tmp_path / "videos"),
        copy_tree(batch.outroot, tmp_path / "out"),
    )


def renders(batch: Batch, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    where = {"VIDEOS": str(batch.videos), "BUNDLE": str(batch.bundle), "OUTROOT": str(batch.outroot)}
    return run_make(batch.tools, *args, "renders", **where, **variables)


def results_dates(batch: Batch) -> dict[str, int]:
    return {stem: (batch.outroot / stem / "results.json").stat().st_mtime_ns for stem in ("alpha", "beta")}


def output_bytes(batch: Batch) -> dict[str, bytes]:
    return {
        f"{stem}/{name}": (batch.outroot / stem / name).read_bytes()
        for stem in ("alpha", "beta")
        for name in (f"{stem}_matched.mp4", "results.json")
    }


def test_renders_makes_one_complete_output_per_video(batch: Batch) -> None:
    for stem in ("alpha", "beta"):
        out = batch.outroot / stem
        facts = describe_video(out / f"{stem}_matched.mp4")
        assert (facts.width, facts.height, facts.frames) == (320, 180, VIDEO_FRAMES)
        assert facts.audio_codec is not None
        results = json.loads((out / "results.json").read_text())
        assert results["counts"]["frames"] == VIDEO_FRAMES
        assert Path(results["video"]["path"]).name == f"{stem}.mp4"
        assert (out / ".rendered").is_file()
        assert (out / ".options").read_text() == "\n"


def test_a_second_run_does_nothing(batch: Batch) -> None:
    before = {path: path.stat().st_mtime_ns for path in batch.outroot.rglob("*")}
    question = renders(batch, "-q")
    assert question.returncode == 0, question.stdout + question.stderr
    dry = renders(batch, "-n")
    assert dry.returncode == 0 and "ff-render" not in dry.stdout, dry.stdout
    again = renders(batch)
    assert again.returncode == 0, again.stderr
    assert "Nothing to be done for 'renders'" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in batch.outroot.rglob("*")} == before


def test_touching_one_video_rerenders_only_that_one(batch: Batch, tmp_path: Path) -> None:
    mine = private_copy(batch, tmp_path)
    before = results_dates(mine)
    (mine.videos / "beta.mp4").touch()
    assert renders(mine, "-q").returncode == 1
    run = renders(mine)
    assert run.returncode == 0, run.stderr
    assert "render" in run.stdout and "beta.mp4" in run.stdout and "alpha.mp4" not in run.stdout
    after = results_dates(mine)
    assert after["alpha"] == before["alpha"]
    assert after["beta"] > before["beta"]
    assert renders(mine, "-q").returncode == 0


def test_changed_render_args_rerender_every_video(batch: Batch, tmp_path: Path) -> None:
    mine = private_copy(batch, tmp_path)
    before = results_dates(mine)
    run = renders(mine, "-j", "2", RENDER_ARGS="--crf 30")
    assert run.returncode == 0, run.stderr
    after = results_dates(mine)
    assert all(after[stem] > before[stem] for stem in before)
    for stem in ("alpha", "beta"):
        assert (mine.outroot / stem / ".options").read_text() == "--crf 30\n"
        assert json.loads((mine.outroot / stem / "results.json").read_text())["options"]["crf"] == 30
    # The same options (spacing aside) are a no-op; dropping them is a change again.
    assert renders(mine, "-q", RENDER_ARGS=" --crf  30 ").returncode == 0
    assert renders(mine, "-q").returncode == 1


def test_a_corrupt_video_fails_by_name_and_leaves_the_others_complete(batch: Batch, tmp_path: Path) -> None:
    mine = private_copy(batch, tmp_path)
    before = output_bytes(mine)
    whole = (mine.videos / "alpha.mp4").read_bytes()
    (mine.videos / "gamma.mp4").write_bytes(whole[:3000])  # header kept, picture data cut off
    (mine.videos / "alpha.mp4").touch()  # so a render runs beside the failing one
    run = renders(mine, "-k", "-j", "2")
    assert run.returncode == 2
    assert f"render FAILED: {mine.videos / 'gamma.mp4'}" in run.stderr
    assert "[Makefile:" in run.stderr and f"{mine.outroot / 'gamma' / '.rendered'}] Error" in run.stderr
    assert not (mine.outroot / "gamma" / ".rendered").exists()
    after = output_bytes(mine)
    assert after["beta/beta_matched.mp4"] == before["beta/beta_matched.mp4"]
    assert after["beta/results.json"] == before["beta/results.json"]
    assert describe_video(mine.outroot / "alpha" / "alpha_matched.mp4").frames == VIDEO_FRAMES
    assert json.loads(after["alpha/results.json"])["counts"]["frames"] == VIDEO_FRAMES
    # Only the failed video is left to do.
    dry = renders(mine, "-n")
    assert "gamma.mp4" in dry.stdout and "alpha.mp4" not in dry.stdout and "beta.mp4" not in dry.stdout


def test_index_and_renders_refuse_missing_arguments(batch: Batch, tmp_path: Path) -> None:
    index = run_make(batch.tools, "index", BUNDLE=str(tmp_path / "bundle"))
    assert index.returncode == 2
    assert index.stderr.startswith("usage: make index POOL=dir BUNDLE=dir")
    assert not (tmp_path / "bundle").exists()
    no_outroot = run_make(batch.tools, "renders", VIDEOS=str(batch.videos), BUNDLE=str(batch.bundle))
    assert no_outroot.returncode == 2
    assert no_outroot.stderr.startswith("usage: make renders VIDEOS=dir BUNDLE=dir OUTROOT=dir")
    no_bundle = run_make(
        batch.tools, "renders", VIDEOS=str(batch.videos), BUNDLE=str(tmp_path), OUTROOT=str(tmp_path / "out")
    )
    assert no_bundle.returncode == 2
    assert no_bundle.stderr.startswith(f"{tmp_path}: not a bundle")
    assert not (tmp_path / "out").exists()
