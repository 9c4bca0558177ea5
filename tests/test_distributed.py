"""ff-index builds on a Dask cluster: same bundle as loky, survives a killed worker, clear errors.

One LocalCluster (2 worker processes under nannies) serves the module; the pool is
real pictures (skimage crops, flips and hues) written as JPEGs in the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fluxframe_index.build import BuildOptions, build_bundle, staging_dir
from fluxframe_index.cli import main as ff_index
from fluxframe_index.distributed import WORKER_WAIT_ENV, dask_backend
from fluxframe_index.extract import ChunkStats
from shared.spec import FeatureSpec
from tests.pools import make_pool

distributed = pytest.importorskip("dask.distributed")

pytestmark = [pytest.mark.dask, pytest.mark.slow]  # each module starts Dask clusters

POOL_SIZE = 96
CHUNK = 3  # many small chunks: a worker is killed while most are still to do
SPEC = FeatureSpec(method="canny", comparison_size=128)
SPEC_ARGS = ["--method", "canny", "--comparison-size", "128"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as c,
        distributed.Client(c) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dist") / "pool"
    make_pool(folder, POOL_SIZE, seed=3, max_side=900, min_side=400, nested=True)
    return folder


@pytest.fixture(scope="module")
def loky_bundle(pool: Path) -> Path:
    dest = pool.parent / "loky"
    build_bundle(pool, dest, BuildOptions(spec=SPEC, jobs=2, chunk_size=8, backend="loky"))
    return dest


def assert_same_bundle(a: Path, b: Path) -> None:
    """Same vectors byte for byte, same image table (ids, paths, sizes, mtimes, hashes)."""
    assert (a / "vectors.npy").read_bytes() == (b / "vectors.npy").read_bytes()
    ta, tb = pq.read_table(a / "images.parquet"), pq.read_table(b / "images.parquet")
    assert ta.column("id").to_pylist() == tb.column("id").to_pylist()
    assert ta.column("path").to_pylist() == tb.column("path").to_pylist()
    assert ta.equals(tb)


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(ff_index, [str(a) for a in args], catch_exceptions=False)


def test_cli_on_a_scheduler_builds_the_loky_bundle(cluster: Any, pool: Path, loky_bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dask"
    address = cluster.scheduler_address
    run = invoke("build", pool, dest, *SPEC_ARGS, "--chunk-size", "5", "--backend", "dask", "--scheduler", address)
    assert run.exit_code == 0, run.output
    assert f"indexed {POOL_SIZE} images" in run.stdout
    assert_same_bundle(dest, loky_bundle)
    assert not staging_dir(dest).exists()


def test_cli_local_cluster_builds_the_loky_bundle(
    pool: Path, loky_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No --scheduler: the command starts (and stops) its own LocalCluster of --jobs workers.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    dest = tmp_path / "dask-local"
    run = invoke("build", pool, dest, *SPEC_ARGS, "--backend", "dask", "--jobs", "2", "--quiet")
    assert run.exit_code == 0, run.output
    assert_same_bundle(dest, loky_bundle)
    # Dask's nannies set OMP_NUM_THREADS=1 in this process for their workers; it is put back.
    assert "OMP_NUM_THREADS" not in os.environ


def test_killed_worker_is_retried_and_the_bundle_is_identical(
    cluster: Any, pool: Path, loky_bundle: Path, tmp_path: Path
) -> None:
    client = distributed.Client(cluster.scheduler_address)
    try:
        pids_before: dict[str, int] = client.run(os.getpid)
        victim = sorted(pids_before.values())[0]
        dest = tmp_path / "dask-killed"
        shards = staging_dir(dest) / "shards"
        chunks = -(-POOL_SIZE // CHUNK)
        seen_at_kill: list[int] = []

        def kill_after_first_shard() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = len(list(shards.glob("*.meta.parquet"))) if shards.is_dir() else 0
                if done:
                    os.kill(victim, signal.SIGKILL)
                    seen_at_kill.append(done)
                    return
                time.sleep(0.002)

        killer = threading.Thread(target=kill_after_first_shard)
        reports: list[ChunkStats] = []
        killer.start()
        try:
            with dask_backend(cluster.scheduler_address, 2):
                result = build_bundle(
                    pool, dest, BuildOptions(spec=SPEC, chunk_size=CHUNK, backend="dask"), on_chunk=reports.append
                )
        finally:
            killer.join()
        assert seen_at_kill and seen_at_kill[0] < chunks, "the worker was not killed mid-build"
        assert result.indexed == POOL_SIZE
        assert sorted(r.index for r in reports) == list(range(chunks))  # every chunk reported exactly once
        assert_same_bundle(dest, loky_bundle)
        # The nanny replaced the killed process: the cluster is whole again for later tests.
        client.wait_for_workers(2, timeout=60)
        pids_after = set(client.run(os.getpid).values())
        assert victim not in pids_after and len(pids_after) == 2
    finally:
        client.close()


def test_update_through_dask_matches_a_full_rebuild(cluster: Any, pool: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pool"
    shutil.copytree(pool, copy)
    bundle, full = tmp_path / "bundle", tmp_path / "full"
    build_bundle(copy, bundle, BuildOptions(spec=SPEC, chunk_size=16))
    removed = sorted(copy.rglob("*.jpg"))[5]
    removed.unlink()
    make_pool(copy / "new", 4, seed=9, max_side=600, min_side=400)
    address = cluster.scheduler_address
    run = invoke("build", copy, bundle, *SPEC_ARGS, "--update", "--backend", "dask", "--scheduler", address, "--quiet")
    assert run.exit_code == 0, run.output
    assert f"update: kept {POOL_SIZE - 1}, added 4, changed 0, deleted 1" in run.stdout
    build_bundle(copy, full, BuildOptions(spec=SPEC))
    assert np.array_equal(np.load(bundle / "vectors.npy"), np.load(full / "vectors.npy"))
    assert_same_bundle(bundle, full)


def test_unreachable_scheduler_is_one_line_error(pool: Path, tmp_path: Path) -> None:
    env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    ff = Path(sys.executable).parent / "ff-index"
    args = [str(ff), "build", str(pool), str(tmp_path / "b"), "--backend", "dask", "--scheduler", "tcp://127.0.0.1:1"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ff-index: error: cannot reach the Dask scheduler"), lines
    assert "tcp://127.0.0.1:1" in lines[0]
    assert not (tmp_path / "b").exists()


def test_scheduler_without_workers_is_one_line_error(
    pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORKER_WAIT_ENV, "1")
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty:
        run = invoke("build", pool, tmp_path / "b", "--backend", "dask", "--scheduler", empty.scheduler_address)
    assert run.exit_code == 2, run.output
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "has no worker (waited 1 s" in lines[0], lines
    assert f"dask worker {empty.scheduler_address}" in lines[0]
    assert not (tmp_path / "b").exists()


def test_malformed_scheduler_address_is_a_usage_error(pool: Path, tmp_path: Path) -> None:
    run = invoke("build", pool, tmp_path / "b", "--backend", "dask", "--scheduler", "nonsense")
    assert run.exit_code == 2
    assert run.stderr.strip().count("\n") == 0 and "bad Dask scheduler address 'nonsense'" in run.stderr
