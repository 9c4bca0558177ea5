"""shared.search and fluxframe_index.ivf on real features: exact vs IVF, exclusion, limits, mmap opens.

Pools are the canny features of 48 real pictures (skimage/sklearn photos, cut and
scaled by tests.pools), tiled to a few thousand rows with per-row noise and each block
normalised again, as an extractor finishes its vectors. Truth is plain numpy arithmetic.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from numpy.typing import NDArray

from fluxframe_index.ivf import build_ivf_index
from shared.bundle import (
    IMAGES,
    IMAGES_SCHEMA,
    INDEX,
    REJECTED,
    REJECTED_SCHEMA,
    VECTORS,
    finalize_bundle,
    open_bundle,
)
from shared.features.base import Block
from shared.search import Searcher, UsedSet, exact_search_excluding, open_ivf
from shared.spec import FeatureSpec
from tests.search_support import Pool, frames, random_used, real_features, same_results, tile, truth

MB = 1 << 20


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[NDArray[np.float32], tuple[Block, ...]]:
    return real_features(tmp_path_factory.mktemp("search-real"))


@pytest.fixture(scope="module")
def pool(real: tuple[NDArray[np.float32], tuple[Block, ...]], tmp_path_factory: pytest.TempPathFactory) -> Pool:
    base, blocks = real
    return Pool(tmp_path_factory.mktemp("search-pool"), tile(base, blocks, 3000, seed=1), blocks, nlist=32)


# -- IVF build --------------------------------------------------------------------------------------


def test_ivf_written_list_by_list_is_byte_for_byte_faiss_own_file(pool: Pool) -> None:
    """The streamed writer produces what index.add + write_index would, without holding the lists in RAM."""
    trained = pool.ivf.quantizer
    assert trained is not None
    centroids = trained.reconstruct_n(0, pool.ivf.nlist)
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(centroids)
    reference = faiss.IndexIVFFlat(quantizer, centroids.shape[1], pool.ivf.nlist, faiss.METRIC_INNER_PRODUCT)
    reference.is_trained = True
    reference.add(np.asarray(pool.vectors))
    assert bytes(faiss.serialize_index(reference)) == pool.index_path.read_bytes()
    assert pool.info.nlist == 32 and pool.info.train_size == 32 * 64


def test_ivf_matches_exact_when_every_list_is_probed(pool: Pool) -> None:
    queries = frames(pool, 200, seed=2)
    want = truth(pool, queries, 10)
    same_results(Searcher(pool.vectors).search(queries, 10), want)
    ivf = Searcher(pool.vectors, ivf=pool.ivf, nprobe=pool.info.nlist)
    same_results(ivf.search(queries, 10), want)
    used = random_used(3000, 900, seed=3)
    same_results(ivf.search(queries, 10, used), truth(pool, queries, 10, used))
    assert ivf.stats == {"exact_fallback_rows": 0, "widened_rows": 0}


# -- exclusion ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("used_count", [0, 300, 2400])
def test_exact_exclusion_is_exact_and_never_returns_a_used_id(pool: Pool, used_count: int) -> None:
    queries = frames(pool, 150, seed=4)
    used = random_used(3000, used_count, seed=used_count)
    got = Searcher(pool.vectors).search(queries, 40, used)
    assert not used.bits[got[1]].any() and (got[1] >= 0).all()
    same_results(got, truth(pool, queries, 40, used))


def test_exact_exclusion_of_a_scene_best_matches(pool: Pool) -> None:
    """The hard case for over-fetching: every query's 500 best images are used. One masked pass finds the rest."""
    queries = frames(pool, 64, seed=5)
    used = UsedSet(3000)
    used.add_many(truth(pool, queries[:1], 500)[1][0])
    got = exact_search_excluding(pool.vectors, queries, 20, used, block_bytes=64 * 1024)  # many blocks
    assert not used.bits[got[1]].any()
    same_results(got, truth(pool, queries, 20, used))


def test_ivf_exclusion_never_returns_a_used_id(pool: Pool) -> None:
    queries = frames(pool, 300, seed=6)
    searcher = Searcher(pool.vectors, ivf=pool.ivf, nprobe=4)
    for count in (0, 500, 2000):
        used = random_used(3000, count, seed=count + 1)
        scores, ids = searcher.search(queries, 20, used)
        assert (ids >= 0).all() and not used.bits[ids].any()
        assert (np.diff(scores, axis=1) <= 0).all()
        # Every score is the true score of its image: found by a search, not made up.
        true = np.einsum("qd,qkd->qk", queries, np.asarray(pool.vectors)[ids])
        np.testing.assert_allclose(scores, true, atol=2e-6)


def test_ivf_lists_running_dry_widen_then_search_exactly(pool: Pool) -> None:
    """All but 5 images used: the probed lists run dry; more lists, then exact search. Never a random pick."""
    queries = frames(pool, 100, seed=7)
    free = np.array([17, 777, 1500, 2222, 2999])
    used = UsedSet(3000)
    used.add_many(np.setdiff1d(np.arange(3000), free))
    searcher = Searcher(pool.vectors, ivf=pool.ivf, nprobe=1)
    scores, ids = searcher.search(queries, 10, used)
    want_s, want_i = truth(pool, queries, 5, used)
    assert (ids[:, :5] == want_i).all() and (ids[:, 5:] == -1).all()
    np.testing.assert_allclose(scores[:, :5], want_s, atol=2e-6)
    assert np.isneginf(scores[:, 5:]).all()
    assert searcher.stats["widened_rows"] > 0
    assert searcher.stats["exact_fallback_rows"] > 0


def test_ivf_widens_only_rows_with_fewer_than_enough_unused_candidates(pool: Pool) -> None:
    """k deeper than a list (greedy no-repeat asks for a batch's worth): rows holding ``enough`` stay as probed."""
    queries = frames(pool, 120, seed=8)
    lean = Searcher(pool.vectors, ivf=pool.ivf, nprobe=1)
    scores, ids = lean.search(queries, 200, None, enough=10)
    assert lean.stats == {"exact_fallback_rows": 0, "widened_rows": 0}
    found = (ids >= 0).sum(axis=1)
    assert (found >= 10).all()
    short_of_k = int((found < 200).sum())  # ~94 images a list
    assert short_of_k > 60

    deep = Searcher(pool.vectors, ivf=pool.ivf, nprobe=1)
    _, widened_ids = deep.search(queries, 200, None)
    assert deep.stats["widened_rows"] >= short_of_k
    assert ((widened_ids >= 0).sum(axis=1) == 200).all()
    # What a row holds is its probed list's best, in the widened answer's order where they agree.
    assert (ids[:, 0] == widened_ids[:, 0]).mean() > 0.9

    # Used images leave some rows' lists short of enough: those rows, and only those, look wider.
    used = UsedSet(3000)
    used.add_many(ids[:40, :].ravel()[ids[:40, :].ravel() >= 0])
    short = Searcher(pool.vectors, ivf=pool.ivf, nprobe=1)
    scores, ids = short.search(queries, 200, used, enough=10)
    assert 0 < short.stats["widened_rows"] <= 120
    assert ((ids >= 0).sum(axis=1) >= 10).all()
    assert not used.bits[ids[ids >= 0]].any()
    assert (np.diff(scores[:, :10], axis=1) <= 0).all()


def test_scores_and_ranks_do_not_depend_on_the_thread_count(pool: Pool) -> None:
    """BLAS may sum in a thread-dependent order (a machine's property, so not asserted here);
    FluxFrame rescores the head of every answer exactly, so its answers never depend on it."""
    queries = frames(pool, 60, seed=9)
    vectors = np.asarray(pool.vectors)
    before = faiss.omp_get_max_threads()
    answers = []
    try:
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            answers.append(Searcher(pool.vectors).search(queries, 10))
    finally:
        faiss.omp_set_num_threads(before)
    (s1, i1), (s2, i2) = answers
    assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
    exact = np.einsum("qd,qkd->qk", queries.astype(np.float64), vectors[i1].astype(np.float64)).astype(np.float32)
    assert np.array_equal(s1, exact)


def test_used_set_keeps_its_packed_bitmap_in_step() -> None:
    used = UsedSet(1000)
    used.add_many([0, 7, 8, 999, 7])
    assert used.count == 4 and 999 in used and 6 not in used
    assert np.array_equal(used.packed(), np.packbits(used.bits, bitorder="little"))
    # Set directly (as a benchmark may): the packed copy follows on its next use.
    used.bits[[3, 500]] = True
    used.count = int(used.bits.sum())
    used.add(501)
    assert np.array_equal(used.packed(), np.packbits(used.bits, bitorder="little"))
    other = used.copy()
    other.add(2)
    assert 2 not in used and np.array_equal(other.packed(), np.packbits(other.bits, bitorder="little"))
    assert used.count_below(10) == 4 and used.count_below(5000) == used.count


# -- --demo-images limit ------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "nprobe"), [(2000, 4), (100, 4), (2000, 32)])
def test_limit_never_returns_ids_beyond_it(pool: Pool, limit: int, nprobe: int) -> None:
    queries = frames(pool, 120, seed=8)
    used = random_used(3000, 600, seed=9)
    for ivf in (None, pool.ivf):
        searcher = Searcher(pool.vectors, ivf=ivf, nprobe=nprobe, limit=limit)
        for exclude in (None, used):
            scores, ids = searcher.search(queries, 15, exclude)
            assert (ids >= 0).all() and (ids < limit).all()
            if exclude is not None:
                assert not exclude.bits[ids].any()
            if ivf is None or nprobe == 32 or limit == 100:
                # Exact, all lists probed, or a range so small that it is searched exactly.
                same_results((scores, ids), truth(pool, queries, 15, exclude, limit))


# -- memory-mapped opens ------------------------------------------------------------------------------


@pytest.mark.slow
def test_opening_a_large_bundle_maps_its_vectors_and_lists(
    real: tuple[NDArray[np.float32], tuple[Block, ...]], tmp_path: Path
) -> None:
    """~210 MB of vectors and ~210 MB of IVF lists: opening the bundle and its index reads neither."""
    base, blocks = real
    n, dim = 140_000, base.shape[1]
    work = tmp_path / "work"
    work.mkdir()
    vectors = np.lib.format.open_memmap(work / VECTORS, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 20_000):
        vectors[start : start + 20_000] = tile(base, blocks, 20_000, seed=start)
    vectors.flush()
    del vectors
    ids = np.arange(n, dtype=np.int64)
    table = pa.table(
        {
            "id": ids,
            "path": [f"img-{i}.jpg" for i in range(n)],
            "raw_path": [f"img-{i}.jpg".encode() for i in range(n)],
            "bytes": ids,
            "mtime_ns": ids,
            "width": np.full(n, 640, np.int32),
            "height": np.full(n, 360, np.int32),
            "sha256": [""] * n,
        },
        schema=IMAGES_SCHEMA,
    )
    pq.write_table(table, work / IMAGES)
    pq.write_table(pa.table({"path": [], "reason": [], "detail": []}, schema=REJECTED_SCHEMA), work / REJECTED)
    info = build_ivf_index(work / VECTORS, work / INDEX, nlist=64, progress=False)
    dest = tmp_path / "bundle"
    finalize_bundle(
        work, dest, spec=FeatureSpec(method="canny"), blocks=blocks, pool_root=tmp_path, pool_fingerprint="0" * 64,
        count=n, rejected_count=0, dim=dim, index=info,
    )  # fmt: skip
    size = (dest / VECTORS).stat().st_size
    assert size > 200 * MB and (dest / INDEX).stat().st_size > 200 * MB

    process = psutil.Process(os.getpid())
    before = process.memory_info().rss
    bundle = open_bundle(dest, verify=False)
    mapped = bundle.vectors
    ivf = open_ivf(dest / INDEX)
    grown = process.memory_info().rss - before
    assert isinstance(mapped, np.memmap) and mapped.shape == (n, dim)
    assert ivf.ntotal == n
    assert grown < 20 * MB, f"opening grew RSS by {grown / MB:.1f} MB for {2 * size / MB:.0f} MB of files"
    # And it searches: a pool row finds itself through the mapped lists.
    _, found = Searcher(mapped, ivf=ivf, nprobe=8).search(np.asarray(mapped[[105, 70_000]]), 1)
    assert found[:, 0].tolist() == [105, 70_000]
