"""``--assign global``: the images of a window of frames chosen together, as one assignment problem.

Greedy no-repeat gives each frame, in order, its best unused image, so an early frame
can take the image a later frame matches far better. Here a window of frames (the whole
clip by default) is solved at once: a sparse frames x images matrix of candidates,
weight = score, solved by scipy's ``min_weight_full_bipartite_matching`` on shifted
costs (``top + 1 - score``: positive, and with every frame matched, the smallest sum
of costs is the largest sum of scores).

The candidates of a frame are its top ``depth`` images not used by earlier windows,
plus the image greedy no-repeat gives it. Greedy is run first anyway, for the
comparison that results.json reports, and its choices are one full matching of the
graph, so:

- a full matching always exists, however many frames share the same few candidates
  (a static shot longer than ``depth``): no frame is left without an image, none is
  given a random one;
- the assignment's total score is never below greedy's (it is the best matching of a
  graph that contains greedy's).

Greedy here is what ff-render's greedy mode does: frame by frame, the best candidate
no earlier frame took; a frame whose candidates are all taken is searched again with
the frames after it (a batch of them), everything taken so far excluded.

Everything depends only on the window's candidates and the used ids at its start, and
every search made here is of a fixed set of rows: the same window solved again (after a
resume) gives the same choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from shared.errors import StateError
from shared.search import UsedSet

ASSIGN_MODES = ("greedy", "global")
MIN_DEPTH = 64
DEPTH_PER_SEARCH_DEPTH = 4

Candidates = tuple[NDArray[np.float32], NDArray[np.int64]]
# research(window rows, k, used) -> the top-k of those rows with ``used`` excluded
Research = Callable[[NDArray[np.intp], int, UsedSet], Candidates]


def candidate_depth(search_depth: int) -> int:
    """Candidates per frame in the matching: a few times the search depth, at least MIN_DEPTH."""
    return max(DEPTH_PER_SEARCH_DEPTH * search_depth, MIN_DEPTH)


@dataclass(frozen=True)
class WindowResult:
    image_ids: NDArray[np.int64]
    scores: NDArray[np.float32]
    greedy_ids: NDArray[np.int64]
    greedy_scores: NDArray[np.float32]  # what greedy no-repeat gives the same frames from the same start
    beyond_depth: int  # frames whose image is not among their top ``depth`` (only greedy's pick reached them)

    @property
    def mean_score(self) -> float:
        return float(self.scores.mean()) if self.scores.size else 0.0

    @property
    def greedy_mean_score(self) -> float:
        return float(self.greedy_scores.mean()) if self.greedy_scores.size else 0.0


def _valid(scores: NDArray[np.float32], ids: NDArray[np.int64]) -> Candidates:
    keep = ids >= 0
    return scores[keep], ids[keep]


def _first_free(ids: NDArray[np.int64], taken: set[int]) -> int:
    for position, image_id in enumerate(ids.tolist()):
        if image_id not in taken:
            return position
    return -1


def greedy_choices(
    scores: NDArray[np.float32], ids: NDArray[np.int64], used: UsedSet, research: Research, batch: int
) -> Candidates:
    """Greedy no-repeat over a window: each row the best candidate no earlier row took.

    ``scores``/``ids`` are each row's top candidates with ``used`` already excluded. A row
    whose candidates are all taken is searched again together with the ``batch`` rows from
    it on, with everything taken so far excluded, as ff-render's greedy mode does.
    """
    frames, depth = ids.shape
    image_ids = np.empty(frames, dtype=np.int64)
    chosen = np.empty(frames, dtype=np.float32)
    taken: set[int] = set()
    fresh: dict[int, Candidates] = {}
    excluded: UsedSet | None = None
    for row in range(frames):
        row_scores, row_ids = fresh.pop(row) if row in fresh else _valid(scores[row], ids[row])
        pick = _first_free(row_ids, taken)
        if pick < 0:
            if excluded is None:
                excluded = used.copy()
                excluded.add_many(sorted(taken))
            chunk = np.arange(row, min(frames, row + batch), dtype=np.intp)
            found_s, found_i = research(chunk, max(depth, chunk.size), excluded)
            for j, other in enumerate(chunk.tolist()):
                fresh[other] = _valid(found_s[j], found_i[j])
            row_scores, row_ids = fresh.pop(row)
            pick = _first_free(row_ids, taken)
            if pick < 0:
                raise StateError(f"no-repeat ran out of images: all {used.count + len(taken)} usable images are taken")
        image_ids[row], chosen[row] = row_ids[pick], row_scores[pick]
        taken.add(int(row_ids[pick]))
        if excluded is not None:
            excluded.add(int(row_ids[pick]))
    return chosen, image_ids


def assign_window(
    scores: NDArray[np.float32], ids: NDArray[np.int64], used: UsedSet, research: Research, *, batch: int
) -> WindowResult:
    """One distinct image per row of ``ids`` (each row a frame's top candidates, ``used`` excluded)."""
    frames = ids.shape[0]
    greedy_s, greedy_i = greedy_choices(scores, ids, used, research, batch)
    # Each row's edges: its valid candidates, plus greedy's pick when that lies deeper.
    valid = ids >= 0
    extra = ~(ids == greedy_i[:, None]).any(axis=1)
    rows = np.concatenate([np.nonzero(valid)[0], np.flatnonzero(extra)])
    edge_ids = np.concatenate([ids[valid], greedy_i[extra]])
    edge_scores = np.concatenate([scores[valid], greedy_s[extra]]).astype(np.float64)
    columns, inverse = np.unique(edge_ids, return_inverse=True)
    top = float(edge_scores.max()) if edge_scores.size else 0.0
    shape = (frames, columns.size)
    graph = sp.csr_matrix((top + 1.0 - edge_scores, (rows, inverse.ravel())), shape=shape)
    score_of = sp.csr_matrix((edge_scores, (rows, inverse.ravel())), shape=shape)
    image_ids = greedy_i.copy()
    chosen = greedy_s.copy()
    if frames:
        # Greedy's choices are a full matching of this graph: one exists, and the best is no worse.
        matched_rows, matched_cols = min_weight_full_bipartite_matching(graph)
        image_ids[matched_rows] = columns[matched_cols]
        chosen[matched_rows] = np.asarray(score_of[matched_rows, matched_cols]).ravel().astype(np.float32)
        if float(chosen.astype(np.float64).sum()) < float(greedy_s.astype(np.float64).sum()):
            # Only float rounding of the shifted costs can get here: keep the promise, take greedy's.
            image_ids, chosen = greedy_i.copy(), greedy_s.copy()
    beyond = int((extra & (image_ids == greedy_i)).sum())
    return WindowResult(image_ids, chosen, greedy_i, greedy_s, beyond)
