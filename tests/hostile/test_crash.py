"""Crash safety: real kill -9 at random points, and a full disk, never lose or half-write trusted output.

ff-index build is killed (whole process group, SIGKILL) at random moments of its work,
several times in a row per seed, over an existing older bundle at the same path. After
every kill, each file a later run trusts is checked complete: the bundle at the target
path, the staging plan and every finished shard. The final rerun must give a bundle
byte-identical to an uninterrupted build.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from shared.bundle import MANIFEST, read_manifest, verify_bundle
from shared.errors import EXIT_IO
from tests.hostile.bundles import write_small_pool
from tests.hostile.kill import kill_at_random_point, run_with_file_size_limit
from tests.hostile.procs import FAST_INDEX_ARGS, Arg, assert_clean_failure, child_env, run, tool
from tests.hostile.renders import (
    CLIP_FRAMES,
    RENDER_ARGS,
    RenderMedia,
    check_render_output,
    make_render_media,
    render_progress,
    results_frames,
)

# slow: real processes killed at many moments, then resumed and compared byte for byte.
pytestmark = pytest.mark.slow

POOL_IMAGES = 48
INDEX_ARGS: list[Arg] = [*FAST_INDEX_ARGS, "--chunk-size", "2"]
KILLS_PER_SEED = 3
SHARDS = POOL_IMAGES // 2
BUNDLE_FILES = ("images.parquet", "rejected.parquet", "vectors.npy")
LOCK = ".ff-render.lock"
RENDER_KILL_JITTER = 0.03  # seconds after a progress point


@dataclass(frozen=True)
class IndexSetup:
    pool: Path
    old: Path  # an earlier bundle (first 20 images) that each run replaces
    reference: Path  # the uninterrupted build
    window: float  # seconds the reference spent working (staging folder present)


def staging(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.partial"


@pytest.fixture(scope="module")
def index_setup(tmp_path_factory: pytest.TempPathFactory) -> IndexSetup:
    root = tmp_path_factory.mktemp("crash-index")
    pool = root / "pool"
    write_small_pool(pool, POOL_IMAGES)
    old = root / "old"
    assert run("ff-index", ["build", pool, old, *INDEX_ARGS, "--limit", "20"]).returncode == 0
    reference = root / "reference"
    proc = subprocess.Popen(
        [tool("ff-index"), "build", str(pool), str(reference), *INDEX_ARGS], env=child_env(), stderr=subprocess.PIPE
    )
    while not staging(reference).exists() and proc.poll() is None:
        time.sleep(0.002)
    began = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return IndexSetup(pool, old, reference, time.monotonic() - began)


def same_bundle(a: Path, b: Path) -> None:
    """Byte-identical files, and manifests that differ only in when they were written."""
    for name in BUNDLE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / MANIFEST).read_text()) for d in (a, b))
    for m in (ma, mb):
        del m["created_at"], m["bundle_id"]
    assert ma == mb


def check_trusted_files(dest: Path, old_id: str, reference: Path) -> str:
    """Every file a later run would trust is complete. Returns which bundle is at ``dest``."""
    # The target always holds a complete bundle: the earlier one or the finished new one, never neither.
    manifest = verify_bundle(dest)
    state = "old" if manifest.bundle_id == old_id else "new"
    if state == "new":
        same_bundle(dest, reference)
    stage = staging(dest)
    plan = stage / "plan.json"
    # Without its plan a staging folder is not trusted (the next run starts it afresh): it may be
    # half-removed. With it, every finished shard (metadata present) must be whole.
    if plan.exists():
        assert set(json.loads(plan.read_text())) >= {"spec_sha256", "pool_fingerprint", "chunk_size"}
        for meta in sorted((stage / "shards").glob("shard-*.meta.parquet")):
            table = pq.read_table(meta)  # complete Parquet, or this raises
            vectors = np.load(meta.with_name(meta.name.replace(".meta.parquet", ".vec.npy")), allow_pickle=False)
            ok = sum(s == "ok" for s in table.column("status").to_pylist())
            assert vectors.shape[0] == ok and np.isfinite(vectors).all(), meta.name
        for vec in sorted((stage / "shards").glob("shard-*.vec.npy")):
            np.load(vec, allow_pickle=False)  # written atomically even before its metadata
    # stage/bundle, where the bundle is assembled (and the replaced one lands), is never trusted:
    # every run empties it first.
    return state


def at_least(progress: Callable[[Path], int], where: Path, target: int) -> Callable[[], bool]:
    return lambda: progress(where) >= target


def finished_shards(dest: Path) -> int:
    if not (staging(dest) / "plan.json").exists():
        return 0
    return len(list((staging(dest) / "shards").glob("shard-*.meta.parquet")))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_builds_resume_to_the_identical_bundle(index_setup: IndexSetup, tmp_path: Path, seed: int) -> None:
    """Three kills land at random points of the remaining work (after a random number of further
    shards, plus a random part of one shard's time); a fourth around the manifest and the swap."""
    rng = random.Random(seed)
    dest = tmp_path / "bundle"
    shutil.copytree(index_setup.old, dest)
    old_id = read_manifest(dest).bundle_id
    args: list[Arg] = ["build", index_setup.pool, dest, *INDEX_ARGS]
    if seed == 3:  # two loky workers: the kill takes the whole process group
        args[args.index("--jobs") + 1] = "2"
    # Kill points leave at least two shards of work after them (two workers finish two at once), and
    # the random delay past a point is at most one shard's time: a kill that came after the build had
    # finished would test nothing, and every later run would find the bundle done.
    last_point = SHARDS - 2
    kills = []
    for _ in range(KILLS_PER_SEED):
        target = rng.randint(min(finished_shards(dest) + 1, last_point), last_point)
        outcome = kill_at_random_point(
            "ff-index", args, at_least(finished_shards, dest, target), index_setup.window / SHARDS, rng
        )
        state = check_trusted_files(dest, old_id, index_setup.reference)
        kills.append((target, round(outcome.delay, 3), outcome.killed, state))
    # The last kill lands within a few ms of the manifest being written: the swap and the clean-up.
    sealed = staging(dest) / "bundle" / MANIFEST
    outcome = kill_at_random_point("ff-index", args, sealed.exists, 0.01, rng)
    state = check_trusted_files(dest, old_id, index_setup.reference)
    kills.append((-1, round(outcome.delay, 3), outcome.killed, state))
    final = run("ff-index", args)
    assert final.returncode == 0, final.stderr
    assert check_trusted_files(dest, old_id, index_setup.reference) == "new"
    same_bundle(dest, index_setup.reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"], "staging or a set-aside bundle was left behind"
    assert sum(killed for _, _, killed, _ in kills) >= 2, kills


@pytest.mark.parametrize("limit", [100, 48_000])
def test_a_full_disk_is_one_clear_error_and_the_earlier_bundle_stays(
    index_setup: IndexSetup, tmp_path: Path, limit: int
) -> None:
    """RLIMIT_FSIZE in the child: the first write past ``limit`` bytes fails with EFBIG, like ENOSPC.

    100 bytes fails the staging plan; 48 kB lets the shards through and fails the bundle's vectors.
    """
    dest = tmp_path / "bundle"
    shutil.copytree(index_setup.old, dest)
    before = {name: (dest / name).read_bytes() for name in (*BUNDLE_FILES, MANIFEST)}
    args: list[Arg] = ["build", index_setup.pool, dest, *INDEX_ARGS]
    result = run_with_file_size_limit("ff-index", args, limit)
    assert_clean_failure(result, EXIT_IO, "ff-index: error: ", "File too large")
    assert {name: (dest / name).read_bytes() for name in before} == before
    verify_bundle(dest)
    # With room again, the same command finishes the job.
    again = run("ff-index", args)
    assert again.returncode == 0, again.stderr
    same_bundle(dest, index_setup.reference)


# --- ff-render ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderSetup:
    media: RenderMedia
    reference: Path  # OUT of an uninterrupted render
    window: float  # seconds it worked (from taking the lock to exiting)


@pytest.fixture(scope="module")
def render_setup(tmp_path_factory: pytest.TempPathFactory) -> RenderSetup:
    root = tmp_path_factory.mktemp("crash-render")
    media = make_render_media(root)
    reference = root / "reference"
    proc = subprocess.Popen(
        [tool("ff-render"), str(media.clip), str(media.bundle), str(reference), *RENDER_ARGS],
        env=child_env(),
        stderr=subprocess.PIPE,
    )
    while not (reference / LOCK).exists() and proc.poll() is None:
        time.sleep(0.002)
    began = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return RenderSetup(media, reference, time.monotonic() - began)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_killed_renders_resume_to_identical_results(render_setup: RenderSetup, tmp_path: Path, seed: int) -> None:
    """The first kill falls at a random moment after the lock is taken (opening, decoding, matching);
    the next ones at random points of the progress (frames matched, frame pictures written), each
    plus a few random milliseconds, so the last ones fall in the video's encoding and renaming."""
    rng = random.Random(seed)
    media = render_setup.media
    out = tmp_path / "out"
    args: list[Arg] = [media.clip, media.bundle, out, *RENDER_ARGS]
    finished = 2 * CLIP_FRAMES + 1
    seen = []
    for attempt in range(KILLS_PER_SEED):
        target = 0 if attempt == 0 else rng.randint(min(render_progress(out) + 1, finished), finished)
        if target == 0:  # a random moment after taking the lock: opening, decoding, matching
            outcome = kill_at_random_point("ff-render", args, lambda: (out / LOCK).exists(), 0.5, rng)
        else:
            outcome = kill_at_random_point(
                "ff-render", args, at_least(render_progress, out, target), RENDER_KILL_JITTER, rng
            )
        seen.append((target, round(outcome.delay, 3), outcome.killed, check_render_output(out)))
    final = run("ff-render", args)
    assert final.returncode == 0, final.stderr
    assert results_frames(out) == results_frames(render_setup.reference)
    assert check_render_output(out) == check_render_output(render_setup.reference)
    reference_mp4 = render_setup.reference / "clip_matched.mp4"
    # x264 is deterministic for the same frames and settings: the resumed video is the same file.
    assert (out / "clip_matched.mp4").read_bytes() == reference_mp4.read_bytes()
    assert sum(killed for _, _, killed, _ in seen) >= 2, seen


def test_a_full_disk_during_a_render_keeps_the_earlier_video(render_setup: RenderSetup, tmp_path: Path) -> None:
    """A second render into a finished OUT (other output options) meets a 20 kB file size limit."""
    media = render_setup.media
    out = tmp_path / "out"
    shutil.copytree(render_setup.reference, out)
    mp4 = out / "clip_matched.mp4"
    before = mp4.read_bytes()
    checkpoint = (out / "checkpoint.jsonl").read_bytes()
    args: list[Arg] = [media.clip, media.bundle, out, *RENDER_ARGS, "--crf", "30"]
    result = run_with_file_size_limit("ff-render", args, 20_000)
    assert_clean_failure(result, EXIT_IO, "ff-render: error: ", "File too large")
    assert mp4.read_bytes() == before, "the earlier video was touched"
    assert (out / "checkpoint.jsonl").read_bytes() == checkpoint, "the matches were touched"
    check_render_output(out)
    again = run("ff-render", args)
    assert again.returncode == 0, again.stderr
    assert results_frames(out) == results_frames(render_setup.reference)
