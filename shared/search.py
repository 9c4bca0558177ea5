"""Nearest-neighbour search over a bundle's vectors: exact (blocked, mmapped) or IVF, batched.

Scores are inner products of weighted queries (see features.base.weight_query)
with unit-norm stored vectors. Ids are rows of vectors.npy (= FAISS ids).

Without exclusion, exact search is faiss.knn over blocks of the mapped rows (its fused
GEMM + heap: 2.2 ms/query at 500K x 376 against 3.0 for the masked scan below, measured
with batches of 384). Excluding used ids (no-repeat) costs the same whatever the number
used:

- exact: a masked scan. Each block of rows is scored with one BLAS product (numpy),
  the used rows' columns are set to -inf, and FAISS's C++ heaps keep the top k. No
  FAISS selector (it turns BLAS off for flat search, measured 8x slower) and no
  over-fetch (a scene whose best images are all taken would need k + thousands).
- IVF: an IDSelector inside the probe, over a packed bitmap the UsedSet keeps up to
  date one bit per add (nothing per batch grows with the pool). Rows whose probed
  lists run out of unused candidates look into more lists, then are searched
  exactly; never a random pick.

Whatever the path, the first RESCORED_COLUMNS candidates of every answer are scored
again in float64 and re-ranked, so choices and reported scores do not depend on how
many threads BLAS used.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
from numpy.typing import NDArray

from shared.errors import BundleError, UsageError

# FAISS scores flat searches with BLAS only when queries x dim reaches this (128,000 by
# default: 340 queries at 376-d); below it, its per-query loop is 7x slower at 1M rows
# (34 ms against 5.8 ms a query for a batch of 232, measured). A clip's last, partial
# batch fell there. Where the two cross (one thread, ms or us a query, loop vs BLAS):
# 376-d frame vectors, 200k rows: 1 query 16 vs 45 ms, 2: 19 vs 24, 4: 17 vs 11, 8: 17 vs 6.4;
# 48-d tile descriptors, 20k rows: 1: 272 vs 866 us, 4: 140 vs 133, 8: 145 vs 93, 20: 173 vs 68,
# 50: 136 vs 62. 1,024 is 3 queries at 376-d and 22 at 48-d: the loop keeps only batches it
# is about as fast for (it was 4,096: 11 and 86, which left 4-10 frames or 22-85 cells 1.5-2.7x
# slower than BLAS).
FAISS_BLAS_THRESHOLD = 1024


def use_blas_for_small_batches() -> None:
    """Lower FAISS's process-wide BLAS threshold to FAISS_BLAS_THRESHOLD (idempotent).

    Done where a search is set up, not when this module is imported: importing must not change
    how every other FAISS call in the process runs.
    """
    faiss.cvar.distance_compute_blas_threshold = FAISS_BLAS_THRESHOLD


# Rows of the mmapped matrix scored per FAISS call: bounds RAM for bundles larger than it.
DEFAULT_BLOCK_ROWS = 262_144
# Masked scan: the queries x rows score matrix of one block stays under this many bytes.
MASKED_BLOCK_BYTES = 64 << 20
# An IVF row that ran dry looks into 4x more lists while that stays under this share of
# all lists; past it one exact (BLAS) scan of the remaining rows is cheaper.
WIDEN_MAX_SHARE = 4
# Leading candidates of every answer whose scores are recomputed exactly (see exact_scores).
RESCORED_COLUMNS = 64
# Queries rescored at a time: bounds the rows gathered from the mapped vectors.
RESCORE_QUERY_CHUNK = 32


class UsedSet:
    """Image ids already used (no-repeat): a bool per id plus the same as packed bits for FAISS.

    ``add`` is O(1) and keeps both in step. Code that sets ``bits`` directly must set
    ``count`` to match; the packed copy is then rebuilt once, on its next use.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.bits: NDArray[np.bool_] = np.zeros(size, dtype=np.bool_)
        self.count = 0
        self._packed = np.zeros((size + 7) // 8, dtype=np.uint8)
        self._packed_count = 0  # ``count`` when ``_packed`` last matched ``bits``

    def add(self, image_id: int) -> None:
        if self.bits[image_id]:
            return
        in_step = self._packed_count == self.count
        self.bits[image_id] = True
        self.count += 1
        if in_step:
            self._packed[image_id >> 3] |= np.uint8(1 << (image_id & 7))
            self._packed_count = self.count

    def discard(self, image_id: int) -> None:
        """Make an id usable again (a reuse gap that has passed)."""
        if not self.bits[image_id]:
            return
        self.bits[image_id] = False
        self.count -= 1
        # The packed copy no longer matches: rebuilt once, on its next use.
        self._packed_count = -1

    def add_many(self, image_ids: NDArray[np.int64] | list[int]) -> None:
        for image_id in np.asarray(image_ids, dtype=np.int64).tolist():
            self.add(image_id)

    def __contains__(self, image_id: int) -> bool:
        return bool(self.bits[image_id])

    def copy(self) -> UsedSet:
        other = UsedSet(0)
        other.size, other.bits, other.count = self.size, self.bits.copy(), self.count
        other._packed, other._packed_count = self._packed.copy(), self._packed_count
        return other

    def count_below(self, limit: int) -> int:
        """Used ids < ``limit``: O(1) for the whole range, O(limit) for a smaller one."""
        return self.count if limit >= self.size else int(np.count_nonzero(self.bits[:limit]))

    def packed(self) -> NDArray[np.uint8]:
        """1 bit per id, set when used (little bit order, as faiss.IDSelectorBitmap reads it)."""
        if self._packed_count != self.count:
            self._packed = np.packbits(self.bits, bitorder="little")
            self._packed_count = self.count
        return self._packed


def merge_topk(
    scores: NDArray[np.float32], ids: NDArray[np.int64], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Best ``k`` per row of concatenated candidate lists, sorted by descending score, ties by id."""
    k = min(k, scores.shape[1])
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, axis=1)
        ids = np.take_along_axis(ids, part, axis=1)
    return _sorted(scores, ids)


def _sorted(scores: NDArray[np.float32], ids: NDArray[np.int64]) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Rows by descending score, ties by ascending id, missing slots (-1) last with score -inf."""
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    if not scores.size:
        return scores, ids
    order = np.lexsort((np.where(ids >= 0, ids, np.iinfo(np.int64).max), -scores), axis=1)
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def exact_scores(
    vectors: NDArray[np.float32], queries: NDArray[np.float32], ids: NDArray[np.int64]
) -> NDArray[np.float32]:
    """<query i, vectors[ids[i, j]]> summed in float64 and rounded once; -inf where ids is -1.

    BLAS (FAISS's flat search, numpy's matmul) sums in an order that depends on the
    number of threads, so the same render under another OMP_NUM_THREADS or on another
    core count got scores a few ulp apart, and near-equal candidates in another order
    (measured: two processes of one test run). float32 products are exact in float64 and
    sums in another order differ by ~1e-16, far below float32's step, so the rounded
    score is the same whatever the order (short of a sum landing on a rounding boundary).
    """
    out = np.full(ids.shape, -np.inf, dtype=np.float32)
    valid = ids >= 0
    for start in range(0, ids.shape[0], RESCORE_QUERY_CHUNK):
        stop = start + RESCORE_QUERY_CHUNK
        chunk = ids[start:stop]
        rows = np.asarray(vectors[np.where(valid[start:stop], chunk, 0).ravel()], dtype=np.float64)
        rows = rows.reshape(chunk.shape[0], chunk.shape[1], -1)
        dots = np.einsum("qd,qkd->qk", np.asarray(queries[start:stop], dtype=np.float64), rows)
        out[start:stop] = np.where(valid[start:stop], dots, -np.inf).astype(np.float32)
    return out


def rescore_head(
    vectors: NDArray[np.float32],
    queries: NDArray[np.float32],
    scores: NDArray[np.float32],
    ids: NDArray[np.int64],
    columns: int = RESCORED_COLUMNS,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The first ``columns`` candidates of each row with exact scores, re-ranked (ties by id).

    Selection reads the head of each list (the best, a draw among the top search depth,
    the first unused image), so its choices and the scores it reports no longer depend
    on thread counts; what stays below the head keeps the search's own scores.
    """
    head = min(columns, ids.shape[1])
    if head == 0 or ids.shape[0] == 0:
        return scores, ids
    head_scores, head_ids = _sorted(exact_scores(vectors, queries, ids[:, :head]), ids[:, :head])
    if head == ids.shape[1]:
        return head_scores, head_ids
    return (
        np.concatenate([head_scores, scores[:, head:]], axis=1),
        np.concatenate([head_ids, ids[:, head:]], axis=1),
    )


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
    use_blas_for_small_batches()
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


def exact_search_excluding(
    vectors: NDArray[np.float32],
    queries: NDArray[np.float32],
    k: int,
    used: UsedSet | None,
    *,
    limit: int | None = None,
    block_bytes: int = MASKED_BLOCK_BYTES,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Exact top-k of every query among the rows of ``vectors[:limit]`` that ``used`` does not hold.

    One pass over the rows whatever ``used`` holds; missing slots have id -1 and score -inf.
    """
    n = vectors.shape[0] if limit is None else min(limit, vectors.shape[0])
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq = queries.shape[0]
    k = max(1, min(k, n))
    # A min-heap per query keeps its k largest scores. All slots at the heaps' floor already
    # form valid heaps: no heapify (nor reorder at the end), whose OpenMP regions cost ~8 ms
    # each when they follow a numpy BLAS call (the two thread pools contend, measured).
    best_s = np.full((nq, k), np.finfo(np.float32).min, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0:
        return best_s, best_i
    heaps = faiss.float_minheap_array_t()
    heaps.nh, heaps.k = nq, k
    heaps.val, heaps.ids = faiss.swig_ptr(best_s), faiss.swig_ptr(best_i)
    rows = max(1024, min(n, block_bytes // (4 * nq)))
    buffer = np.empty(nq * rows, dtype=np.float32)
    for start in range(0, n, rows):
        block = vectors[start : min(n, start + rows)]
        scores = buffer[: nq * block.shape[0]].reshape(nq, block.shape[0])
        np.matmul(queries, block.T, out=scores)
        if used is not None:
            taken = np.flatnonzero(used.bits[start : start + block.shape[0]])
            if taken.size:
                scores[:, taken] = -np.inf  # below the heaps' floor (-FLT_MAX): never kept
        ids = np.arange(start, start + block.shape[0], dtype=np.int64)
        heaps.addn_with_ids(block.shape[0], faiss.swig_ptr(scores), faiss.swig_ptr(ids), 0)  # stride 0: one id row
    return _sorted(best_s, best_i)


def open_ivf(path: Path) -> faiss.IndexIVF:
    """Read an IVF index with its inverted lists memory-mapped, not copied."""
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        if isinstance(index, faiss.IndexIVF):
            return index
        ivf = faiss.extract_index_ivf(index)
        # extract_index_ivf returns a non-owning view: keep the owner alive as long as the view.
        ivf.referenced_objects = [index]  # type: ignore[attr-defined]
        return ivf
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise BundleError(f"{path}: cannot read FAISS index ({first})") from None


class Searcher:
    """Batched top-k search over one bundle's vectors, with optional exclusion of used ids.

    ``stats`` counts rows that needed more than the first probe: ``widened_rows`` (IVF,
    more lists), ``exact_fallback_rows`` (IVF, then exact search).
    """

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
        use_blas_for_small_batches()
        self.vectors = vectors
        self.size = int(vectors.shape[0]) if limit is None else min(limit, int(vectors.shape[0]))
        self.limit = limit
        self.block_rows = block_rows
        self.ivf = ivf
        self.nprobe = nprobe or 0
        self.nlist = 0
        if ivf is not None:
            if int(ivf.ntotal) != vectors.shape[0]:
                raise BundleError(f"the IVF index holds {ivf.ntotal} vectors, the bundle {vectors.shape[0]}")
            self.nlist = int(faiss.extract_index_ivf(ivf).nlist)
            self.nprobe = max(1, min(self.nlist, nprobe or max(1, self.nlist // 32)))
        self.stats = {"exact_fallback_rows": 0, "widened_rows": 0}

    def search(
        self, queries: NDArray[np.float32], k: int, used: UsedSet | None = None, *, enough: int | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top ``k`` unused candidates per query, best first.

        Exact search fills all ``k`` slots (id -1 only when fewer images are unused). IVF
        returns what the probed lists hold; a row with fewer than ``enough`` (default
        ``k``) unused candidates there looks into more lists, then is searched exactly.
        A greedy no-repeat caller that needs one free candidate per frame passes its search
        depth: asking every row for a whole batch's worth would widen rows whose lists
        hold plenty for the frame's own pick (the cost grew with the used share, measured).
        """
        if k < 1:
            raise UsageError(f"search depth must be >= 1, got {k}")
        if enough is not None and enough < 1:
            raise UsageError(f"enough candidates must be >= 1, got {enough}")
        k = min(k, self.size)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.ivf is not None and not self._range_beats_ivf():
            scores, ids = self._search_ivf(queries, k, used, min(k, enough or k))
        else:
            scores, ids = self._exact(queries, k, used)
        return rescore_head(self.vectors, queries, scores, ids)

    def _range_beats_ivf(self) -> bool:
        # A limit of S of N rows: exact search over S reads no more vectors than the probe would.
        total = int(self.vectors.shape[0])
        return self.size < total and self.size * self.nlist <= total * self.nprobe

    def _exact(
        self, queries: NDArray[np.float32], k: int, used: UsedSet | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        if used is None:
            return exact_search(self.vectors, queries, k, limit=self.size, block_rows=self.block_rows)
        return exact_search_excluding(self.vectors, queries, k, used, limit=self.size)

    def _search_ivf(
        self, queries: NDArray[np.float32], k: int, used: UsedSet | None, enough: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        assert self.ivf is not None
        in_use = used is not None and used.count > 0
        available = self.size - (used.count_below(self.size) if used is not None and in_use else 0)
        want = min(enough, available)
        keep: list[faiss.IDSelector] = []  # FAISS holds raw pointers: the selectors must outlive the search
        selector = self._selector(used if in_use else None, keep)
        scores, ids = self._probe(queries, k, self.nprobe, selector)
        rows = np.flatnonzero((ids[:, :want] < 0).any(axis=1)) if want else np.array([], dtype=np.intp)
        nprobe = self.nprobe
        while rows.size and nprobe * 4 <= max(self.nprobe, self.nlist // WIDEN_MAX_SHARE):
            # The probed lists ran out of (unused) candidates: look into more lists.
            nprobe *= 4
            self.stats["widened_rows"] += int(rows.size)
            scores[rows], ids[rows] = self._probe(queries[rows], k, nprobe, selector)
            rows = rows[(ids[rows, :want] < 0).any(axis=1)]
        if rows.size:
            # Never a random pick: what IVF cannot answer, exact search does.
            self.stats["exact_fallback_rows"] += int(rows.size)
            scores[rows], ids[rows] = exact_search_excluding(
                self.vectors, queries[rows], k, used if in_use else None, limit=self.size
            )
        return _sorted(scores, ids)

    def _probe(
        self, queries: NDArray[np.float32], k: int, nprobe: int, selector: faiss.IDSelector | None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        assert self.ivf is not None
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
        if selector is not None:
            params.sel = selector
        scores, ids = self.ivf.search(queries, k, params=params)
        return scores.astype(np.float32), ids.astype(np.int64)

    def _selector(self, used: UsedSet | None, keep: list[faiss.IDSelector]) -> faiss.IDSelector | None:
        """Allowed ids: not used, and below the limit. Built in O(1) over the UsedSet's own bitmap."""
        parts: list[faiss.IDSelector] = []
        if used is not None:
            packed = used.packed()
            taken = faiss.IDSelectorBitmap(packed.size, faiss.swig_ptr(packed))
            keep.append(taken)
            parts.append(faiss.IDSelectorNot(taken))
        if self.size < self.vectors.shape[0]:
            parts.append(faiss.IDSelectorRange(0, self.size))
        keep.extend(parts)
        if len(parts) == 2:
            both = faiss.IDSelectorAnd(parts[0], parts[1])
            keep.append(both)
            return both
        return parts[0] if parts else None
