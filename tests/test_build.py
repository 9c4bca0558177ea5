"""ff-index build: kill -9 and resume, no-op rebuilds, spec and pool changes, --limit, --jobs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fluxframe_index.build import BuildOptions, BuildResult, build_bundle, staging_dir
from fluxframe_index.extract import ChunkStats
from shared.bundle import IMAGES, VECTORS, open_bundle
from shared.errors import StateError
from shared.spec import FeatureSpec
from tests.pools import copy_tree, make_pool, pool_images, write_jpeg

BIG_POOL = 300
KILL_CHUNK = 10
CANNY = FeatureSpec(method="canny")


def ff_index() -> list[str]:
    """The installed console script, run as a user runs it."""
    script = Path(sys.executable).with_name("ff-index")
    return [str(script)] if script.exists() else [sys.executable, "-c", "from fluxframe_index.cli import main; main()"]


class Interrupted(Exception):
    """Stands in for a crash between chunks (in-process builds)."""


def stop_after(chunks: int) -> Callable[[ChunkStats], None]:
    seen: list[ChunkStats] = []

    def on_chunk(stats: ChunkStats) -> None:
        seen.append(stats)
        if len(seen) >= chunks:
            raise Interrupted

    return on_chunk


def interrupted_build(pool: Path, dest: Path, options: BuildOptions, chunks: int) -> None:
    with pytest.raises(Interrupted):
        build_bundle(pool, dest, options, on_chunk=stop_after(chunks))
    assert not dest.exists() or (dest / "manifest.json").exists()
    assert list((staging_dir(dest.absolute()) / "shards").glob("*.meta.parquet"))


def images_rows(bundle: Path) -> list[tuple[int, str]]:
    table = pq.read_table(bundle / IMAGES, columns=["id", "path"])
    return list(zip(table.column("id").to_pylist(), table.column("path").to_pylist(), strict=True))


def assert_same_bundle_content(a: Path, b: Path) -> None:
    assert (a / VECTORS).read_bytes() == (b / VECTORS).read_bytes()
    assert images_rows(a) == images_rows(b)
    left, right = open_bundle(a).manifest, open_bundle(b).manifest
    assert (left.spec_sha256, left.pool_fingerprint, left.count, left.dim) == (
        right.spec_sha256,
        right.pool_fingerprint,
        right.count,
        right.dim,
    )


@pytest.fixture(scope="module")
def big_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big-pool")
    make_pool(root, BIG_POOL, seed=1, min_side=320, max_side=800, nested=True)
    return root


@pytest.fixture(scope="module")
def reference(big_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted canny build of the big pool, one process."""
    dest = tmp_path_factory.mktemp("reference") / "bundle"
    result = build_bundle(big_pool, dest, BuildOptions(spec=CANNY, jobs=1, chunk_size=KILL_CHUNK))
    assert result.indexed == BIG_POOL and not result.rejected
    return dest


@pytest.mark.slow
def test_kill_9_during_build_then_resume_gives_identical_bundle(
    big_pool: Path, reference: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "bundle"
    command = [
        *ff_index(),
        "build",
        str(big_pool),
        str(dest),
        "--method",
        "canny",
        "--chunk-size",
        str(KILL_CHUNK),
        "--jobs",
        "1",
        "--quiet",
    ]
    shards = staging_dir(dest) / "shards"
    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(shards.glob("*.meta.parquet"))) < 3:
            assert victim.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "no shards appeared"
            time.sleep(0.002)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    finished = len(list(shards.glob("*.meta.parquet")))
    assert 3 <= finished < BIG_POOL // KILL_CHUNK
    assert not dest.exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed {finished} finished shards" in resumed.stdout
    assert not staging_dir(dest).exists()
    assert_same_bundle_content(dest, reference)
    open_bundle(dest, verify=True)


def test_two_jobs_and_other_chunk_sizes_give_identical_vectors(big_pool: Path, reference: Path, tmp_path: Path) -> None:
    result = build_bundle(big_pool, tmp_path / "bundle", BuildOptions(spec=CANNY, jobs=2, chunk_size=64))
    assert result.indexed == BIG_POOL
    assert_same_bundle_content(tmp_path / "bundle", reference)


def test_rebuild_of_an_unchanged_pool_is_a_no_op(small_pool: Path, tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    options = BuildOptions(spec=CANNY, jobs=1, chunk_size=5)
    first = build_bundle(small_pool, dest, options)
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    again = build_bundle(small_pool, dest, options)
    assert again.up_to_date and not first.up_to_date
    assert again.manifest.bundle_id == first.manifest.bundle_id
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
    # Parameters a method ignores do not make a different spec either.
    ignored = BuildOptions(spec=FeatureSpec(method="canny", spatial_grid=3, projection_seed=5), chunk_size=7)
    assert build_bundle(small_pool, dest, ignored).up_to_date


def _fresh(pool: Path, dest: Path, spec: FeatureSpec, *, replace: bool = False) -> BuildResult:
    return build_bundle(pool, dest, BuildOptions(spec=spec, jobs=1, chunk_size=5, replace=replace))


@pytest.mark.parametrize(
    "new_spec",
    [FeatureSpec(method="hog"), FeatureSpec(method="canny", comparison_size=128), FeatureSpec(method="spatial_color")],
    ids=["method", "size", "assets"],
)
def test_a_changed_spec_rebuilds_fully_and_never_mixes(new_spec: FeatureSpec, small_pool: Path, tmp_path: Path) -> None:
    _fresh(small_pool, tmp_path / "fresh", new_spec)
    # Over a finished bundle of another spec.
    over_bundle = tmp_path / "over-bundle"
    _fresh(small_pool, over_bundle, CANNY)
    with pytest.raises(StateError, match="pass --replace"):  # never silently: its renders would stop opening it
        _fresh(small_pool, over_bundle, new_spec)
    result = _fresh(small_pool, over_bundle, new_spec, replace=True)
    assert not result.up_to_date and result.manifest.spec_sha256 == new_spec.sha256()
    assert_same_bundle_content(over_bundle, tmp_path / "fresh")
    # Over the finished shards of a crashed build of another spec (same chunking, same pool).
    over_shards = tmp_path / "over-shards"
    interrupted_build(small_pool, over_shards, BuildOptions(spec=CANNY, chunk_size=5), chunks=2)
    result = _fresh(small_pool, over_shards, new_spec)
    assert result.resumed_shards == 0
    assert_same_bundle_content(over_shards, tmp_path / "fresh")


def test_resume_after_an_interruption_keeps_the_finished_shards(small_pool: Path, tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    options = BuildOptions(spec=FeatureSpec(method="spatial_color"), chunk_size=3)
    interrupted_build(small_pool, dest, options, chunks=2)
    result = build_bundle(small_pool, dest, options)
    assert result.resumed_shards == 2 and result.indexed == 12
    _fresh(small_pool, tmp_path / "fresh", options.spec)
    assert_same_bundle_content(dest, tmp_path / "fresh")


def test_a_changed_pool_rebuilds(small_pool: Path, tmp_path: Path) -> None:
    pool = copy_tree(small_pool, tmp_path / "pool")
    dest = tmp_path / "bundle"
    first = _fresh(pool, dest, CANNY)
    old_vectors = dict(zip([p for _, p in images_rows(dest)], np.load(dest / VECTORS), strict=True))

    write_jpeg(pool / "d1" / "added.jpg", pool_images(40, seed=2)[-1])
    added = _fresh(pool, dest, CANNY)
    assert not added.up_to_date and added.indexed == 13
    assert added.manifest.pool_fingerprint != first.manifest.pool_fingerprint
    new_vectors = dict(zip([p for _, p in images_rows(dest)], np.load(dest / VECTORS), strict=True))
    assert set(new_vectors) == {*old_vectors, "d1/added.jpg"}
    for path, vector in old_vectors.items():
        np.testing.assert_array_equal(new_vectors[path], vector)

    # Rewritten content (same name) and a removed file are noticed too.
    changed = sorted(pool.rglob("*.jpg"))[0]
    write_jpeg(changed, pool_images(41, seed=2)[-1])
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    rewritten = _fresh(pool, dest, CANNY)
    assert not rewritten.up_to_date
    rel = changed.relative_to(pool).as_posix()
    assert not np.array_equal(
        dict(zip([p for _, p in images_rows(dest)], np.load(dest / VECTORS), strict=True))[rel], new_vectors[rel]
    )
    (pool / "d1" / "added.jpg").unlink()
    assert _fresh(pool, dest, CANNY).indexed == 12


def test_an_interrupted_build_of_a_changed_pool_starts_over(small_pool: Path, tmp_path: Path) -> None:
    pool = copy_tree(small_pool, tmp_path / "pool")
    dest = tmp_path / "bundle"
    interrupted_build(pool, dest, BuildOptions(spec=CANNY, chunk_size=3), chunks=2)
    write_jpeg(pool / "aaa-first.jpg", pool_images(40, seed=2)[-1])  # shifts every later id by one
    result = build_bundle(pool, dest, BuildOptions(spec=CANNY, chunk_size=3))
    assert result.resumed_shards == 0 and result.indexed == 13
    _fresh(pool, tmp_path / "fresh", CANNY)
    assert_same_bundle_content(dest, tmp_path / "fresh")


def test_a_moved_pool_is_not_up_to_date(small_pool: Path, tmp_path: Path) -> None:
    first_root = copy_tree(small_pool, tmp_path / "a")
    dest = tmp_path / "bundle"
    _fresh(first_root, dest, CANNY)
    second_root = copy_tree(first_root, tmp_path / "b")  # same names, sizes and mtimes
    shutil.rmtree(first_root)
    result = _fresh(second_root, dest, CANNY)
    assert not result.up_to_date
    assert open_bundle(dest).pool_root == second_root.resolve()
    assert all(p.is_file() for p in open_bundle(dest).image_paths(list(range(12))))


def test_a_damaged_bundle_is_rebuilt_not_declared_up_to_date(small_pool: Path, tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    _fresh(small_pool, dest, CANNY)
    (dest / VECTORS).unlink()
    result = _fresh(small_pool, dest, CANNY)
    assert not result.up_to_date
    open_bundle(dest, verify=True)


def test_limit_indexes_the_first_n_sorted_paths(small_pool: Path, tmp_path: Path) -> None:
    full = _fresh(small_pool, tmp_path / "full", CANNY)
    limited = build_bundle(small_pool, tmp_path / "limited", BuildOptions(spec=CANNY, limit=5, chunk_size=2))
    all_paths = sorted((p.relative_to(small_pool).as_posix() for p in small_pool.rglob("*.jpg")), key=os.fsencode)
    assert [p for _, p in images_rows(tmp_path / "limited")] == all_paths[:5]
    assert limited.indexed == 5 and full.indexed == 12
    np.testing.assert_array_equal(np.load(tmp_path / "limited" / VECTORS), np.load(tmp_path / "full" / VECTORS)[:5])
    # A different limit is a different request: rebuilt, not "up to date".
    assert not build_bundle(small_pool, tmp_path / "limited", BuildOptions(spec=CANNY, limit=6)).up_to_date
    assert build_bundle(small_pool, tmp_path / "limited", BuildOptions(spec=CANNY, limit=6)).up_to_date
