"""Nearest-neighbour search over a bundle's vectors: exact (blocked, mmapped) or IVF, batched.

Scores are inner products of weighted queries (see features.base.weight_query)
with unit-norm stored vectors. Ids are rows of vectors.npy (= FAISS ids).

Excluding used ids (no-repeat) never uses k + len(used): exact search over-fetches
adaptively and drops used ids with a bitmap (FAISS selectors turn BLAS off for flat
search, measured 8x slower); IVF search uses an IDSelector inside the probe, widens
nprobe for rows that ran dry, then falls back to exact search for those rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from numpy.typing import NDArray

from shared.errors import BundleError, UsageError

# Rows of the mmapped matrix scored per FAISS call: bounds RAM for bundles larger than it.
DEFAULT_BLOCK_ROWS = 262_144


@dataclass
class UsedSet:
    """Bitmap of image ids already used (no-repeat), O(1) to test and to add."""

    size: int
    bits: NDArray[np.bool_] = field(init=False)
    count: int = 0

    def __post_init__(self) -> None:
        self.bits = np.zeros(self.size, dtype=np.bool_)

    def add(self, image_id: int) -> None:
        if not self.bits[image_id]:
            self.bits[image_id] = True
            self.count += 1

    def __contains__(self, image_id: int) -> bool:
        return bool(self.bits[image_id])


def merge_topk(
    scores: NDArray[np.float32], ids: NDArray[np.int64], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Best ``k`` per row of concatenated candidate lists, sorted by descending score, ties by id."""
    k = min(k, scores.shape[1])
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    order = np.lexsort((ids, -scores), axis=1) if scores.size else np.zeros(scores.shape, dtype=np.intp)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def exact_search(
    vectors: NDArray[np.float32],
    queries: NDArray[np.float32],
    k: int,
    *,
    limit: int | None = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Top-k inner products of every query against ``vectors[:limit]``, block by block.

    Missing slots (k larger than the pool) have id -1 and score -inf.
    """
    n = vectors.shape[0] if limit is None else min(limit, vectors.shape[0])
    nq = queries.shape[0]
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    for start in range(0, n, block_rows):
        block = np.ascontiguousarray(vectors[start : min(n, start + block_rows)])
        kk = min(k, block.shape[0])
        scores, ids = faiss.knn(queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        best_s, best_i = merge_topk(
            np.concatenate([best_s, scores.astype(np.float32)], axis=1),
            np.concatenate([best_i, ids.astype(np.int64) + start], axis=1),
            k,
        )
    return best_s, best_i


def drop_used(
    scores: NDArray[np.float32], ids: NDArray[np.int64], used: UsedSet | None, k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.bool_]]:
    """Keep the first ``k`` unused candidates per row; also say which rows have fewer than ``k``."""
    valid = ids >= 0
    if used is not None:
        valid &= ~used.bits[np.where(valid, ids, 0)]
    out_s = np.full((ids.shape[0], k), -np.inf, dtype=np.float32)
    out_i = np.full((ids.shape[0], k), -1, dtype=np.int64)
    short = np.zeros(ids.shape[0], dtype=np.bool_)
    for row in range(ids.shape[0]):
        keep = np.flatnonzero(valid[row])[:k]
        out_s[row, : keep.size] = scores[row, keep]
        out_i[row, : keep.size] = ids[row, keep]
        short[row] = keep.size < k
    return out_s, out_i, short


def open_ivf(path: Path) -> faiss.IndexIVF:
    """Read an IVF index with its inverted lists memory-mapped, not copied."""
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        ivf = faiss.extract_index_ivf(index)
        # extract_index_ivf returns a non-owning view: keep the owner alive as long as the view.
        ivf.referenced_objects = [index]  # type: ignore[attr-defined]
        return ivf
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise BundleError(f"{path}: cannot read FAISS index ({first})") from None


def _ivf_params(selector: faiss.IDSelector | None, nprobe: int) -> faiss.SearchParametersIVF | None:
    if selector is None:
        return None
    params = faiss.SearchParametersIVF()
    params.sel = selector
    params.nprobe = nprobe
    return params


class Searcher:
    """Batched top-k search over one bundle's vectors, with optional exclusion of used ids."""

    def __init__(
        self,
        vectors: NDArray[np.float32],
        *,
        ivf: faiss.IndexIVF | None = None,
        nprobe: int | None = None,
        limit: int | None = None,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> None:
        if limit is not None and limit < 1:
            raise UsageError(f"the image limit must be >= 1, got {limit}")
        self.vectors = vectors
        self.size = vectors.shape[0] if limit is None else min(limit, vectors.shape[0])
        self.limit = limit
        self.block_rows = block_rows
        self.ivf = ivf
        self.nprobe = nprobe or 0
        if ivf is not None:
            nlist = int(faiss.extract_index_ivf(ivf).nlist)
            self.nprobe = max(1, min(nlist, nprobe or max(1, nlist // 32)))
            self.nlist = nlist
        # Over-fetch factor for exclusion, remembered across batches so it settles where it is needed.
        self._fetch_factor = 4
        self.stats = {"exact_fallback_rows": 0, "widened_rows": 0, "refetched_rows": 0}

    def search(
        self, queries: NDArray[np.float32], k: int, used: UsedSet | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top ``k`` unused candidates per query (fewer only when the pool has fewer unused images)."""
        if k < 1:
            raise UsageError(f"search depth must be >= 1, got {k}")
        k = min(k, self.size)
        if self.ivf is not None:
            return self._search_ivf(queries, k, used)
        return self._search_exact(queries, k, used)

    def _exact(self, queries: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        return exact_search(self.vectors, queries, k, limit=self.size, block_rows=self.block_rows)

    def _search_exact(
        self, queries: NDArray[np.float32], k: int, used: UsedSet | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        if used is None or used.count == 0:
            return self._exact(queries, k)
        available = self.size - int(used.bits[: self.size].sum())
        want = min(k, available)
        fetch = min(self.size, k * self._fetch_factor)
        scores, ids = self._exact(queries, fetch)
        out_s, out_i, short = drop_used(scores, ids, used, want)
        rows = np.flatnonzero(short)
        while rows.size and fetch < self.size:
            # Only the rows that ran dry are searched again, deeper.
            fetch = min(self.size, fetch * 4)
            self._fetch_factor = min(1 << 20, max(self._fetch_factor, fetch // k))
            self.stats["refetched_rows"] += int(rows.size)
            s2, i2 = self._exact(queries[rows], fetch)
            rs, ri, rshort = drop_used(s2, i2, used, want)
            out_s[rows], out_i[rows] = rs, ri
            rows = rows[rshort]
        return out_s, out_i

    def _search_ivf(
        self, queries: NDArray[np.float32], k: int, used: UsedSet | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        assert self.ivf is not None
        selector = self._selector(used)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nprobe = self.nprobe
        params = _ivf_params(selector, nprobe)
        if params is None:
            self.ivf.nprobe = nprobe
            scores, ids = self.ivf.search(queries, k)
        else:
            scores, ids = self.ivf.search(queries, k, params=params)
        scores = scores.astype(np.float32)
        ids = ids.astype(np.int64)
        available = self.size - (0 if used is None else int(used.bits[: self.size].sum()))
        want = min(k, available)
        rows = np.flatnonzero((ids[:, :want] < 0).any(axis=1)) if want else np.array([], dtype=np.intp)
        while rows.size and nprobe < self.nlist:
            # The probed lists ran out of (unused) candidates: look into more lists.
            nprobe = min(self.nlist, nprobe * 4)
            self.stats["widened_rows"] += int(rows.size)
            wider = _ivf_params(selector, nprobe)
            if wider is None:
                self.ivf.nprobe = nprobe
                s2, i2 = self.ivf.search(queries[rows], k)
                self.ivf.nprobe = self.nprobe
            else:
                s2, i2 = self.ivf.search(queries[rows], k, params=wider)
            scores[rows], ids[rows] = s2, i2
            rows = rows[(i2[:, :want] < 0).any(axis=1)]
        if rows.size:
            # Never a random pick: what IVF cannot answer, exact search does.
            self.stats["exact_fallback_rows"] += int(rows.size)
            es, ei = self._search_exact(queries[rows], k, used)
            scores[rows], ids[rows] = es, ei
        scores[ids < 0] = -np.inf
        return scores, ids

    def _selector(self, used: UsedSet | None) -> faiss.IDSelector | None:
        limited = self.size < self.vectors.shape[0]
        if (used is None or used.count == 0) and not limited:
            return None
        allowed = np.zeros(self.vectors.shape[0], dtype=np.bool_)
        allowed[: self.size] = True
        if used is not None:
            allowed &= ~used.bits
        packed = np.packbits(allowed, bitorder="little")
        self._selector_bits = packed  # FAISS keeps a pointer: the array must outlive the search
        return faiss.IDSelectorBitmap(allowed.shape[0], faiss.swig_ptr(packed))
