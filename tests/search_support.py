"""Search test pools: real canny features tiled to thousands of rows, and brute-force truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_index.ivf import build_ivf_index
from shared.bundle import INDEX, VECTORS, open_bundle
from shared.features.base import Block, finish_blocks
from shared.search import UsedSet, open_ivf
from shared.spec import FeatureSpec
from tests.pools import make_pool


def real_features(folder: Path, count: int = 48) -> tuple[NDArray[np.float32], tuple[Block, ...]]:
    """The canny vectors of ``count`` real pictures (a pool made by tests.pools, built by ff-index)."""
    make_pool(folder / "pool", count, max_side=480)
    build_bundle(folder / "pool", folder / "bundle", BuildOptions(spec=FeatureSpec(method="canny")))
    bundle = open_bundle(folder / "bundle")
    return np.asarray(bundle.vectors, dtype=np.float32), bundle.manifest.blocks


class Pool:
    """Tiled real features on disk (vectors.npy) with an IVF index of ``nlist`` lists."""

    def __init__(self, folder: Path, vectors: NDArray[np.float32], blocks: tuple[Block, ...], nlist: int) -> None:
        self.vectors_path = folder / VECTORS
        np.save(self.vectors_path, vectors, allow_pickle=False)
        self.vectors: NDArray[np.float32] = np.load(self.vectors_path, mmap_mode="r", allow_pickle=False)
        self.blocks = blocks
        self.index_path = folder / INDEX
        self.info = build_ivf_index(self.vectors_path, self.index_path, nlist=nlist, progress=False)
        self.ivf = open_ivf(self.index_path)


def tile(base: NDArray[np.float32], blocks: tuple[Block, ...], n: int, seed: int) -> NDArray[np.float32]:
    """``n`` rows cycling through ``base``, each but the first copy with Gaussian noise, blocks re-finished."""
    rng = np.random.default_rng(seed)
    rows = base[np.arange(n) % base.shape[0]]
    strength = rng.uniform(0.15, 0.45, size=n).astype(np.float32)
    strength[: base.shape[0]] = 0
    noise = rng.standard_normal(rows.shape, dtype=np.float32) * (strength / np.sqrt(rows.shape[1]))[:, None]
    return split_finish(rows + noise, blocks)


def split_finish(rows: NDArray[np.float32], blocks: tuple[Block, ...]) -> NDArray[np.float32]:
    edges = np.cumsum([b.dim for b in blocks])[:-1]
    return finish_blocks(np.split(rows, edges, axis=1))


def frames(pool: Pool, n: int, seed: int) -> NDArray[np.float32]:
    """Frame-like queries: noisy copies of random pool rows."""
    rng = np.random.default_rng(seed)
    picked = np.asarray(pool.vectors[np.sort(rng.choice(pool.vectors.shape[0], n, replace=False))])
    noise = rng.standard_normal(picked.shape, dtype=np.float32) * np.float32(0.3 / np.sqrt(picked.shape[1]))
    return split_finish(picked + noise, pool.blocks)


def truth(
    pool: Pool, queries: NDArray[np.float32], k: int, used: UsedSet | None = None, limit: int | None = None
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Brute force in float64: top-k unused rows below ``limit``, ties by id."""
    n = pool.vectors.shape[0] if limit is None else limit
    scores = queries.astype(np.float64) @ np.asarray(pool.vectors[:n], dtype=np.float64).T
    if used is not None:
        scores[:, used.bits[:n]] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(n), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1).astype(np.float32), order.astype(np.int64)


def random_used(n: int, count: int, seed: int) -> UsedSet:
    used = UsedSet(n)
    used.add_many(np.random.default_rng(seed).choice(n, count, replace=False))
    return used


Results = tuple[NDArray[np.float32], NDArray[np.int64]]


def same_results(got: Results, want: Results) -> None:
    """Same scores (float32 arithmetic vs float64 truth); same ids wherever the score is not a near-tie."""
    np.testing.assert_allclose(got[0], want[0], atol=2e-6)
    gap = np.abs(np.diff(want[0], axis=1, prepend=np.inf, append=-np.inf))
    clear = (gap[:, :-1] > 1e-5) & (gap[:, 1:] > 1e-5)
    assert (got[1][clear] == want[1][clear]).all()
