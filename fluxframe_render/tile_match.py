"""Tile mode's matcher: every cell of a batch of frames in one search, then per-frame rules.

Search: the cells are queries against the bundle's tile descriptors (tiles.npy,
memory-mapped), scanned exactly in blocks with FAISS's L2 knn (BLAS), one thread. The head
of every answer is scored again in float64 and sorted by (distance, id), so choices do not
depend on batch sizes or BLAS thread counts: a render resumed after a kill, with other
batch boundaries, chooses the same tiles. Without an IVF index, frames are searched one
after the other through tile_cache.CandidateCache, which answers a cell from its last full
search when the triangle inequality proves the answer exact (most cells of real footage
move little between frames); with one (tiles.faiss), all cells of a batch are one IVF search.
Without reuse rules a cell only ever takes its nearest tile, so only that one is searched.

Per frame, in this order:

1. Coherence: a cell keeps the image it had in the previous frame while that image's
   distance stays within ``coherence_margin`` (ΔE) of the best the cell can have now (its
   nearest tile; under reuse rules, what a pass of the rules without holding gives it),
   so a still or slowly changing region keeps its tiles instead of boiling between
   near-equal images. Held cells are claimed first, row-major, under the same reuse rules.
2. The other cells, row-major: the first candidate (by distance, ties by id) that the
   reuse rules allow: at most ``max_uses`` uses of one image in the frame, and two uses of
   one image at least ``min_distance`` cells apart (Chebyshev; metapixel's --distance).
3. Cells whose candidates are all ruled out search again with 4x more candidates, up to
   the whole pool; a pool too small for the rules is a clear error, never a broken rule.

The only state carried between frames is the previous frame's grid of ids, which the
render checkpoints anyway: ``resume(last_grid)`` restores the matcher exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np
from numpy.typing import NDArray

from fluxframe_render.tile_cache import CandidateCache
from shared.bundle import Bundle
from shared.errors import UsageError
from shared.search import open_ivf, use_blas_for_small_batches

# Rows of the mapped descriptor matrix scored per FAISS call: bounds RAM whatever the pool.
DEFAULT_BLOCK_ROWS = 262_144
# Extra candidates fetched past k and dropped after the exact re-ranking, so that float32
# near-ties at the k-th place cannot change which k candidates a cell sees.
FETCH_MARGIN = 8
# Bytes of float64 temporaries the exact re-scoring holds at once (it works in chunks of queries).
RERANK_CHUNK_BYTES = 8 << 20
# Widening factor for cells whose candidates the reuse rules all excluded.
WIDEN = 4
# FAISS (and its BLAS) threads per search. Two OpenMP threads on the 2 shared cores cost 2.6x
# the CPU of one (65 vs 24 ms of CPU a frame, k=1, 20k rows, measured under load) and were
# slower in wall time too: the other core decodes and describes the next batch meanwhile.
SEARCH_THREADS = 1
# Relative error bound of a float32 BLAS squared L2 distance, ||q||^2 + ||x||^2 - 2 q.x, as a share
# of ||q||^2 + ||x||^2: 48 float32 products summed are within ~3e-6 of it; this is 30x that.
F32_REL_ERROR = 1e-4

Grid = NDArray[np.int32]  # [rows, cols] image ids


@dataclass(frozen=True)
class TileRules:
    """Per-frame reuse rules and temporal coherence of tile mode."""

    max_uses: int = 0  # uses of one image within a frame; 0: no limit
    min_distance: int = 0  # cells (Chebyshev) between two uses of one image in a frame; 0 or 1: no limit
    coherence_margin: float | None = 2.0  # ΔE a held image may lose to the best; None: no coherence
    candidates: int = 16  # per cell, before the rules

    def __post_init__(self) -> None:
        if self.max_uses < 0:
            raise UsageError(f"--tile-max-uses must be >= 0 (0: no limit), got {self.max_uses}")
        if self.min_distance < 0:
            raise UsageError(f"--tile-distance must be >= 0 (0: no limit), got {self.min_distance}")
        if self.coherence_margin is not None and not self.coherence_margin >= 0:
            raise UsageError(f"--tile-coherence must be >= 0 ΔE, got {self.coherence_margin}")
        if self.candidates < 1:
            raise UsageError(f"tile candidates must be >= 1, got {self.candidates}")


@dataclass(frozen=True)
class TileFrame:
    """One frame's choice: image ids and their distances (RMS ΔE to the cell), both [rows, cols]."""

    grid: Grid
    distance: NDArray[np.float32]


def default_tile_nprobe(nlist: int) -> int:
    """Lists probed per cell when neither the user nor the bundle says.

    1M bench descriptors, IVF4096, 9,216 cells of the bench clip, nearest tile against the exact
    one: nprobe 16 picks a tile 0.0024 ΔE farther on average (p99 0.05; "just noticeable" is
    2.3) for 73 ms of CPU a frame; 32: 0.0003 ΔE for 155 ms; 64 (nlist / 64, the earlier
    default): 0.0000 for 289 ms. A tile a hundredth of a ΔE off is invisible; the time is not.
    """
    return max(16, nlist // 256)


@contextmanager
def search_threads(threads: int = SEARCH_THREADS) -> Iterator[None]:
    """FAISS OpenMP threads for the calling thread's searches (an OpenMP setting is per thread), restored after."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class TileIndex:
    """Nearest tiles by L2 over a [n, d] descriptor matrix (memory-mapped is fine): exact in
    blocks, or through an L2 IVF index (the bundle's tiles.faiss) with exact re-ranking.

    IVF rows whose probed lists hold fewer than the candidates asked for are searched
    exactly, so a cell never gets fewer candidates than the pool can give.
    """

    def __init__(
        self,
        descriptors: NDArray[np.float32],
        *,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        ivf: faiss.IndexIVF | None = None,
        nprobe: int | None = None,
    ) -> None:
        if descriptors.ndim != 2 or descriptors.shape[0] == 0:
            raise UsageError(f"tile descriptors must be a non-empty [n, d] matrix, got {descriptors.shape}")
        # Its exact search is faiss.knn in batches of a frame's cells: BLAS from the same batch size as frames.
        use_blas_for_small_batches()
        self.descriptors = descriptors
        self.block_rows = block_rows
        self.ivf = ivf
        self.exact_fallback_rows = 0
        self._max_square_norm: float | None = None
        if ivf is not None:
            if int(ivf.ntotal) != descriptors.shape[0] or int(ivf.d) != descriptors.shape[1]:
                raise UsageError(
                    f"the tile IVF index holds {ivf.ntotal} x {ivf.d}, the descriptors {descriptors.shape}"
                )
            if ivf.metric_type != faiss.METRIC_L2:
                raise UsageError("the tile IVF index must use the L2 metric")
            nlist = int(ivf.nlist)
            ivf.nprobe = max(1, min(nlist, nprobe or default_tile_nprobe(nlist)))

    @classmethod
    def for_bundle(cls, bundle: Bundle, *, nprobe: int | None = None) -> TileIndex:
        """The bundle's tile descriptors, through its tiles.faiss when it has one.

        A bundle without tile data raises the one-line BundleError that names the fix.
        """
        path = bundle.tile_index_path
        return cls(bundle.tile_descriptors, ivf=open_ivf(path) if path is not None else None, nprobe=nprobe)

    @property
    def count(self) -> int:
        return int(self.descriptors.shape[0])

    def search(self, queries: NDArray[np.float32], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top min(k, n) of every query: (RMS ΔE distances, ids), sorted by (distance, id)."""
        dist, ids, _ = self.search_bounded(queries, k)
        return dist, ids

    def search_bounded(
        self, queries: NDArray[np.float32], k: int
    ) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float64]]:
        """``search`` and, per query, a distance every descriptor not returned is proven to reach at least.

        The bound holds for the exact scan only (an IVF may miss nearer rows): it is -inf with an IVF.
        """
        n = self.count
        k = min(k, n)
        fetch = min(n, k + FETCH_MARGIN)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nq = queries.shape[0]
        if nq == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64), np.zeros(0, np.float64)
        with search_threads():
            if self.ivf is not None:
                _, found = self.ivf.search(queries, fetch)
                found = found.astype(np.int64)
                short = np.flatnonzero((found < 0).any(axis=1))
                if short.size:
                    self.exact_fallback_rows += int(short.size)
                    found[short] = self._exact_ids(queries[short], fetch)
            else:
                found = self._exact_ids(queries, fetch)
        exact = self.distances(queries, found)
        order = np.lexsort((found, exact), axis=1)
        bound = np.full(nq, -np.inf)
        if self.ivf is None:
            bound = self._outside_bound(queries, exact) if fetch < n else np.full(nq, np.inf)
            if fetch > k:
                # Fetched rows past the k-th are not returned either: the nearest of them bounds them
                # (less a float32 rounding step: its distance was rounded to the nearest float32).
                dropped = np.take_along_axis(exact, order[:, k : k + 1], axis=1)[:, 0].astype(np.float64)
                bound = np.minimum(bound, dropped * (1 - 1e-6))
        order = order[:, :k]
        return np.take_along_axis(exact, order, axis=1), np.take_along_axis(found, order, axis=1), bound

    def _outside_bound(self, queries: NDArray[np.float32], fetched: NDArray[np.float32]) -> NDArray[np.float64]:
        """A lower bound on the distance of every row the exact scan did not fetch.

        The scan keeps the rows of smallest float32 distance, so an unfetched row is at least as
        far in float32 as the farthest fetched one; float32 and exact squared distances differ by at
        most F32_REL_ERROR x (|q|^2 + |x|^2) each, hence the two error terms taken off.
        """
        q2 = np.einsum("qd,qd->q", queries.astype(np.float64), queries.astype(np.float64))
        slack = 2 * F32_REL_ERROR * (q2 + self.max_square_norm)
        far = fetched.max(axis=1).astype(np.float64) ** 2
        bound: NDArray[np.float64] = np.sqrt(np.maximum(far - slack, 0.0))
        return bound

    @property
    def max_square_norm(self) -> float:
        """The largest |x|^2 of the descriptors (one pass over them, on first use)."""
        if self._max_square_norm is None:
            top = 0.0
            for start in range(0, self.count, self.block_rows):
                block = np.asarray(self.descriptors[start : start + self.block_rows], dtype=np.float64)
                top = max(top, float(np.einsum("nd,nd->n", block, block).max()))
            self._max_square_norm = top
        return self._max_square_norm

    def _exact_ids(self, queries: NDArray[np.float32], fetch: int) -> NDArray[np.int64]:
        """Ids of the ``fetch`` nearest descriptors of every query (in no particular order), block by block."""
        n, nq = self.count, queries.shape[0]
        best_d = np.zeros((nq, 0), dtype=np.float32)
        best_i = np.zeros((nq, 0), dtype=np.int64)
        for start in range(0, n, self.block_rows):
            block = np.ascontiguousarray(self.descriptors[start : min(n, start + self.block_rows)], dtype=np.float32)
            dist, ids = faiss.knn(queries, block, min(fetch, block.shape[0]), metric=faiss.METRIC_L2)
            best_d = np.concatenate([best_d, dist.astype(np.float32)], axis=1)
            best_i = np.concatenate([best_i, ids.astype(np.int64) + start], axis=1)
            if best_d.shape[1] > fetch:
                part = np.argpartition(best_d, fetch - 1, axis=1)[:, :fetch]
                best_d = np.take_along_axis(best_d, part, axis=1)
                best_i = np.take_along_axis(best_i, part, axis=1)
        return best_i

    def distances(self, queries: NDArray[np.float32], ids: NDArray[np.int64]) -> NDArray[np.float32]:
        """RMS ΔE of query i to every descriptor ids[i, j], summed in float64 and rounded once.

        The same value whatever the batch or thread count (BLAS sums in varying order).
        """
        out = np.empty(ids.shape, dtype=np.float32)
        # In chunks of queries: a whole IVF batch (9,216 cells x 9 ids x 48 float64, twice) held
        # 64 MB of temporaries, which made a 1M render's peak memory grow past the 20k one's.
        step = max(1, RERANK_CHUNK_BYTES // max(1, 16 * ids.shape[1] * self.descriptors.shape[1]))
        for start in range(0, ids.shape[0], step):
            chunk = ids[start : start + step]
            rows = np.asarray(self.descriptors[chunk.ravel()], dtype=np.float64).reshape(*chunk.shape, -1)
            diff = rows - np.asarray(queries[start : start + step], dtype=np.float64)[:, None, :]
            out[start : start + step] = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
        return out


class _FrameUses:
    """Which images a frame has used, where, and how often: the reuse rules' bookkeeping."""

    def __init__(self, rules: TileRules, cols: int) -> None:
        self.rules = rules
        self.cols = cols
        self.count: dict[int, int] = {}
        self.cells: dict[int, list[tuple[int, int]]] = {}

    def allows(self, image: int, cell: int) -> bool:
        if self.rules.max_uses and self.count.get(image, 0) >= self.rules.max_uses:
            return False
        if self.rules.min_distance > 1:
            row, col = divmod(cell, self.cols)
            gap = self.rules.min_distance
            for other_row, other_col in self.cells.get(image, ()):
                if abs(row - other_row) < gap and abs(col - other_col) < gap:
                    return False
        return True

    def take(self, image: int, cell: int) -> None:
        self.count[image] = self.count.get(image, 0) + 1
        if self.rules.min_distance > 1:
            self.cells.setdefault(image, []).append(divmod(cell, self.cols))


class TileMatcher:
    """Chooses a grid of pool images per frame; state between frames is the previous grid only."""

    def __init__(self, index: TileIndex, grid: tuple[int, int], rules: TileRules | None = None) -> None:
        self.index = index
        self.cols, self.rows = grid
        self.rules = rules or TileRules()
        self.previous: Grid | None = None
        # Exact search only: an IVF's answers are not the exact lists the cache's bound needs.
        self.cache = CandidateCache(index) if index.ivf is None else None

    @property
    def ruled(self) -> bool:
        return bool(self.rules.max_uses or self.rules.min_distance > 1)

    @property
    def candidates(self) -> int:
        """Candidates searched per cell: without reuse rules a cell only ever takes its nearest (or holds)."""
        return self.rules.candidates if self.ruled else 1

    def resume(self, last_grid: Grid | None) -> None:
        """Continue after the frame whose grid is ``last_grid`` (None: from the first frame or a cut)."""
        if last_grid is not None and last_grid.shape != (self.rows, self.cols):
            raise ValueError(f"grid of shape {last_grid.shape}, expected {(self.rows, self.cols)}")
        self.previous = None if last_grid is None else np.array(last_grid, dtype=np.int32)

    def match(self, frames: list[NDArray[np.float32]]) -> list[TileFrame]:
        """One grid per frame, for frames given as cell descriptors [cells, d], in order.

        With an IVF every cell of every frame is searched in one call, otherwise frame by frame
        through the cache; rules and coherence then run frame by frame.
        """
        cells = self.rows * self.cols
        for descriptors in frames:
            if descriptors.shape[0] != cells:
                raise ValueError(f"{descriptors.shape[0]} cell descriptors for a {self.cols}x{self.rows} grid")
        if not frames:
            return []
        k = self.candidates
        batch = self.index.search(np.concatenate(frames), k) if self.cache is None else None
        out = []
        for f, descriptors in enumerate(frames):
            if batch is None:
                assert self.cache is not None
                dist, ids = self.cache.search(descriptors, k)
            else:
                rows = slice(f * cells, (f + 1) * cells)
                dist, ids = batch[0][rows], batch[1][rows]
            frame = self._assign(descriptors, dist, ids)
            self.previous = frame.grid
            out.append(frame)
        return out

    def _assign(self, queries: NDArray[np.float32], dist: NDArray[np.float32], ids: NDArray[np.int64]) -> TileFrame:
        margin = self.rules.coherence_margin
        if self.previous is None or margin is None:
            return self._greedy(queries, dist, ids, held=None)[0]
        # The best a cell can have now: its nearest tile, or under reuse rules what the rules
        # leave it (a first pass without holding): comparing a held image with a nearest tile
        # the rules would not give the cell anyway made ruled mosaics switch 2.3x as often.
        best = dist[:, 0]
        if self.ruled:
            unheld, dist, ids = self._greedy(queries, dist, ids, held=None)
            best = unheld.distance.reshape(-1)  # (the second pass reuses the first's widened candidates)
        previous = self.previous.reshape(-1).astype(np.int64)
        previous_d = self.index.distances(queries, previous[:, None])[:, 0]
        keep = previous_d <= best + np.float32(margin)
        return self._greedy(queries, dist, ids, held=(np.flatnonzero(keep), previous, previous_d))[0]

    def _greedy(
        self,
        queries: NDArray[np.float32],
        dist: NDArray[np.float32],
        ids: NDArray[np.int64],
        held: tuple[NDArray[np.intp], NDArray[np.int64], NDArray[np.float32]] | None,
    ) -> tuple[TileFrame, NDArray[np.float32], NDArray[np.int64]]:
        """Held cells (cells, their previous images and distances) claimed first, row-major; then every
        other cell's first candidate the rules allow, widening the search for cells left without one.

        Returns the frame and the candidate lists as widened (-1 past a cell's own length)."""
        cells = queries.shape[0]
        chosen = np.full(cells, -1, dtype=np.int64)
        chosen_d = np.zeros(cells, dtype=np.float32)
        uses = _FrameUses(self.rules, self.cols)
        if held is not None:
            held_cells, previous, previous_d = held
            for cell in held_cells.tolist():
                image = int(previous[cell])
                if uses.allows(image, cell):
                    uses.take(image, cell)
                    chosen[cell], chosen_d[cell] = image, previous_d[cell]
        waiting = [cell for cell in range(cells) if chosen[cell] < 0]
        while waiting:
            waiting = self._first_allowed(waiting, dist, ids, uses, chosen, chosen_d)
            if not waiting:
                break
            lengths = (ids[waiting] >= 0).sum(axis=1)  # a cell's list may be longer than another's
            if int(lengths.max()) >= self.index.count:
                raise UsageError(
                    f"the tile reuse rules (--tile-max-uses {self.rules.max_uses}, --tile-distance "
                    f"{self.rules.min_distance}) cannot be met by a pool of {self.index.count} images "
                    f"on a {self.cols}x{self.rows} grid; loosen them"
                )
            k = min(self.index.count, int(lengths.min()) * WIDEN)
            wider_d, wider_i = self.index.search(queries[waiting], k)
            if k > ids.shape[1]:
                pad = k - ids.shape[1]
                dist = np.concatenate([dist, np.zeros((cells, pad), dtype=np.float32)], axis=1)
                ids = np.concatenate([ids, np.full((cells, pad), -1, dtype=np.int64)], axis=1)
            dist[waiting, :k], ids[waiting, :k] = wider_d, wider_i
            ids[waiting, k:] = -1
        grid = chosen.astype(np.int32).reshape(self.rows, self.cols)
        return TileFrame(grid, chosen_d.reshape(self.rows, self.cols)), dist, ids

    @staticmethod
    def _first_allowed(
        waiting: list[int],
        dist: NDArray[np.float32],
        ids: NDArray[np.int64],
        uses: _FrameUses,
        chosen: NDArray[np.int64],
        chosen_d: NDArray[np.float32],
    ) -> list[int]:
        """Give each waiting cell its first allowed candidate; return the cells left without one."""
        left = []
        id_rows = ids.tolist()
        for cell in waiting:
            for j, image in enumerate(id_rows[cell]):
                if image >= 0 and uses.allows(image, cell):
                    uses.take(image, cell)
                    chosen[cell], chosen_d[cell] = image, dist[cell, j]
                    break
            else:
                left.append(cell)
        return left
