"""Temporal coherence: which of each frame's candidates to show so that the collage does not flicker.

Candidates come as each frame's top k, best first: ``scores`` float32 and ``ids`` int64
(-1 = no candidate). Two policies, both under the reuse rules of reuse.py:

- ``hold`` (HoldSelector), frame by frame: keep the image on screen while its exact score
  for this frame stays within ``margin`` of the frame's best allowed candidate; otherwise
  (or at a scene cut) take the best. It never keeps an image below best - margin.
  ``margin = 0`` is "off": the best candidate of every frame (ties keep the image on screen).
  Its state is the reuse ledger, which the choices rebuild: a resume picks identically.
- ``smooth`` (SmoothSelector): the sequence of a segment minimising
  ``sum(-score) + switch_cost * switches`` by an exact Viterbi (``viterbi``). A segment
  ends at a scene cut (switching into a cut is free) or at a frame whose index is a
  multiple of ``window`` (switching there costs as anywhere else).
  **Choices are committed per segment**: nothing of a segment is returned before its last
  frame has been pushed, and a returned segment is final. A render checkpoints whole
  segments; a resumed render starts at a segment start with the ledger replayed from its
  choices and the cut flag recomputed (scenes.CutDetector with a lead-in), so it solves
  the remaining segments exactly as an uninterrupted render did. Memory is O(window x k).

Reuse with smooth: a segment is solved with every (frame, image) pair the ledger forbids
removed; its path is then checked run by run against the ledger (a path may itself reuse
an image too often or too soon); a violating run's image is removed from the frames of
that run and the segment solved again, until the path breaks no rule. Every round
removes at least one (frame, image) pair the path used, so it ends.

Ties are broken by image id (lower first) and, in Viterbi, in favour of keeping the
image on screen: the same input always gives the same choices.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.reuse import NO_IMAGE, UNLIMITED, ReuseLedger, ReuseRules
from shared.errors import StateError, UsageError

Scores = NDArray[np.float32]
Ids = NDArray[np.int64]
# Exact scores of some images for some frames: (queries [n, d], ids [m]) -> float32 [n, m].
Scorer = Callable[[NDArray[np.float32], Ids], Scores]
# The exact score of one image for the frame being chosen (an image that is not among its candidates).
ScoreOf = Callable[[int], float]

COHERENCE_MODES = ("off", "hold", "smooth")


@dataclass(frozen=True)
class Pick:
    frame: int
    image_id: int
    score: float


def exact_scorer(vectors: NDArray[np.float32]) -> Scorer:
    """Scores of bundle rows for weighted queries, summed in float64 and rounded once.

    The same arithmetic as shared.search.exact_scores (so the result does not depend on
    BLAS thread counts), but one gather of the rows for all the queries of a segment.
    """

    def score(queries: NDArray[np.float32], ids: Ids) -> Scores:
        rows = np.asarray(vectors[np.asarray(ids, dtype=np.int64)], dtype=np.float64)
        return np.asarray(np.asarray(queries, dtype=np.float64) @ rows.T, dtype=np.float32)

    return score


class OutOfCandidates(StateError):
    """Every candidate of a frame is forbidden by the reuse rules: search it deeper or with exclusions."""

    def __init__(self, frame: int) -> None:
        super().__init__(
            f"no allowed candidate for output frame {frame}: every candidate is used up by the reuse rules; "
            "search deeper (--search-depth) or relax --max-uses / --min-reuse-gap"
        )
        self.frame = frame


def _first_by_cost(cost: NDArray[np.float64], ids: Ids) -> int:
    """Index of the lowest cost, ties by lowest id; -1 when every cost is infinite."""
    if not np.isfinite(cost).any():
        return -1
    order = np.lexsort((ids, cost))
    return int(order[0])


def viterbi(
    scores: Scores,
    ids: Ids,
    switch_cost: float,
    *,
    free: NDArray[np.bool_] | None = None,
    start: int = NO_IMAGE,
) -> Ids:
    """The path (one id per frame) minimising ``sum(-score) + switch_cost * changes``: exact, O(T x k^2).

    ``free[t]``: changing image into frame t costs nothing (a scene cut). ``start``: the
    image shown before frame 0 (changing from it into frame 0 costs ``switch_cost``
    unless ``free[0]``). A row's ids must be distinct; -1 marks no candidate.
    """
    n, k = ids.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if switch_cost < 0:
        raise UsageError(f"switch cost must be >= 0, got {switch_cost}")
    free = np.zeros(n, dtype=np.bool_) if free is None else free
    valid = ids >= 0
    gain = np.where(valid, np.asarray(scores, dtype=np.float64), -np.inf)
    back = np.zeros((n, k), dtype=np.int32)  # index into the previous row; -1: came from ``start``
    entry = np.where(ids[0] == start, 0.0, 0.0 if (free[0] or start == NO_IMAGE) else switch_cost)
    cost = -gain[0] + entry
    back[0] = -1
    for t in range(1, n):
        if not valid[t].any():
            raise OutOfCandidates(t)
        best = _first_by_cost(cost, ids[t - 1])
        if best < 0:
            raise OutOfCandidates(t - 1)
        switch_in = cost[best] + (0.0 if free[t] else switch_cost)
        same = (ids[t][:, None] == ids[t - 1][None, :]) & valid[t][:, None]
        has_same = same.any(axis=1)
        same_at = same.argmax(axis=1)
        stay = np.where(has_same, cost[same_at], np.inf)
        keep = stay <= switch_in  # equal cost: keep the image on screen
        back[t] = np.where(keep, same_at, best)
        cost = -gain[t] + np.where(keep, stay, switch_in)
    last = _first_by_cost(cost, ids[n - 1])
    if last < 0:
        raise OutOfCandidates(n - 1)
    path = np.empty(n, dtype=np.int64)
    for t in range(n - 1, -1, -1):
        path[t] = ids[t, last]
        last = int(back[t, last])
    return path


def path_cost(
    scores: Scores, ids: Ids, path: Ids, switch_cost: float, free: NDArray[np.bool_], start: int = NO_IMAGE
) -> float:
    """``sum(-score) + switch_cost * changes`` of a path through the candidates (for tests and reports)."""
    total, previous = 0.0, start
    for t, image_id in enumerate(path.tolist()):
        column = int(np.flatnonzero(ids[t] == image_id)[0])
        total -= float(scores[t, column])
        if previous != NO_IMAGE and image_id != previous and not free[t]:
            total += switch_cost
        previous = image_id
    return total


# -- hold (and off) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HoldParams:
    margin: float  # keep the image on screen while its score >= best - margin; 0 = off

    def __post_init__(self) -> None:
        if not (np.isfinite(self.margin) and self.margin >= 0):
            raise UsageError(f"hold margin must be >= 0, got {self.margin}")


class HoldSelector:
    """Frame-by-frame hold with hysteresis under reuse rules; ``history`` = image ids already chosen."""

    def __init__(self, params: HoldParams, rules: ReuseRules = UNLIMITED, history: Sequence[int] = ()) -> None:
        self.params = params
        self.ledger = ReuseLedger.replay(rules, history)

    def choose(self, scores: Scores, ids: Ids, *, cut: bool, score_of: ScoreOf) -> Pick:
        """Pick for the next frame from its candidates (best first); ``score_of`` scores the image on screen."""
        frame, ledger = self.ledger.next_frame, self.ledger
        allowed = [j for j in range(ids.size) if ids[j] >= 0 and ledger.allowed(int(ids[j]), frame)]
        if not allowed:
            raise OutOfCandidates(frame)
        best = allowed[0]
        pick = Pick(frame, int(ids[best]), float(scores[best]))
        current = ledger.current
        if not cut and current != NO_IMAGE and current != pick.image_id:
            listed = np.flatnonzero(ids == current)
            current_score = float(scores[listed[0]]) if listed.size else float(score_of(current))
            if current_score >= pick.score - self.params.margin:
                pick = Pick(frame, current, current_score)
        ledger.record(pick.image_id)
        return pick


def hold(
    scores: Scores,
    ids: Ids,
    params: HoldParams,
    *,
    cuts: NDArray[np.bool_] | None = None,
    score_of: Callable[[int, int], float],
    rules: ReuseRules = UNLIMITED,
) -> list[Pick]:
    """Hold over a whole clip's candidates; ``score_of(frame, image_id)`` scores images not listed."""
    selector = HoldSelector(params, rules)
    picks = []
    for t in range(ids.shape[0]):
        cut = bool(cuts[t]) if cuts is not None else t == 0
        picks.append(selector.choose(scores[t], ids[t], cut=cut, score_of=functools.partial(score_of, t)))
    return picks


# -- smooth ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmoothParams:
    switch_cost: float  # in score units: a switch must gain this much summed score
    window: int = 250  # longest segment solved at once (frames; segments also end at cuts)
    shared_candidates: int = 16  # images scored on every frame of a segment, so that any of them can be held

    def __post_init__(self) -> None:
        if not (np.isfinite(self.switch_cost) and self.switch_cost >= 0):
            raise UsageError(f"switch cost must be >= 0, got {self.switch_cost}")
        if self.window < 1 or self.shared_candidates < 0:
            raise UsageError(
                f"window must be >= 1 and shared candidates >= 0, got {self.window}, {self.shared_candidates}"
            )


class SmoothSelector:
    """Viterbi per segment, pushed frame by frame; returns each segment's picks once it is complete.

    ``scorer`` gives exact scores of any images for the segment's queries (``exact_scorer``
    over the bundle's vectors). ``history``: image ids of the frames already committed; the
    next frame pushed must be frame ``len(history)`` and a segment start (a resume point).
    """

    def __init__(
        self, params: SmoothParams, scorer: Scorer, rules: ReuseRules = UNLIMITED, history: Sequence[int] = ()
    ) -> None:
        self.params = params
        self.scorer = scorer
        self.ledger = ReuseLedger.replay(rules, history)
        self._queries: list[NDArray[np.float32]] = []
        self._scores: list[Scores] = []
        self._ids: list[Ids] = []
        self._starts_at_cut = False

    @property
    def pending(self) -> int:
        """Frames pushed but not yet committed."""
        return len(self._ids)

    def starts_segment(self, frame: int, cut: bool) -> bool:
        return cut or frame % self.params.window == 0

    def push(self, query: NDArray[np.float32], scores: Scores, ids: Ids, *, cut: bool) -> list[Pick]:
        """Add the next frame; returns the previous segment's picks when this frame starts a new one."""
        frame = self.ledger.next_frame + self.pending
        done: list[Pick] = []
        if self.starts_segment(frame, cut):
            done = self.finish()
            self._starts_at_cut = cut
        elif not self._ids and frame == self.ledger.next_frame and frame > 0:
            raise StateError(f"a smooth selection can only resume at a segment start, not at frame {frame}")
        self._queries.append(np.asarray(query, dtype=np.float32).reshape(-1))
        self._scores.append(np.asarray(scores, dtype=np.float32))
        self._ids.append(np.asarray(ids, dtype=np.int64))
        return done

    def finish(self) -> list[Pick]:
        """Solve and commit the open segment (at the end of the clip); its picks."""
        if not self._ids:
            return []
        scores, ids = self._candidates()
        path, picked = self._solve(scores, ids)
        first = self.ledger.next_frame
        picks = [Pick(first + t, int(path[t]), float(picked[t])) for t in range(path.size)]
        for image_id in path.tolist():
            self.ledger.record(image_id)
        self._queries, self._scores, self._ids = [], [], []
        return picks

    def _candidates(self) -> tuple[Scores, Ids]:
        """Each frame's own candidates plus images shared by the whole segment, scored exactly.

        Shared: the image on screen (so it can be held into the segment) and the segment's
        best images (by their best score in any frame), so that an image can be held while
        it drops out of a frame's own top k.
        """
        own_scores, own_ids = np.stack(self._scores), np.stack(self._ids)
        valid = own_ids >= 0
        flat_ids, flat_scores = own_ids[valid], own_scores[valid]
        order = np.lexsort((flat_ids, -flat_scores))
        shared: list[int] = [] if self.ledger.current == NO_IMAGE else [self.ledger.current]
        for image_id in flat_ids[order].tolist():
            if len(shared) >= self.params.shared_candidates + (self.ledger.current != NO_IMAGE):
                break
            if image_id not in shared:
                shared.append(image_id)
        if not shared:
            return own_scores, own_ids
        shared_ids = np.array(shared, dtype=np.int64)
        shared_scores = self.scorer(np.stack(self._queries), shared_ids)
        extra_ids = np.broadcast_to(shared_ids, (own_ids.shape[0], shared_ids.size)).copy()
        # An image already among a frame's own candidates keeps the search's score there.
        extra_ids[(extra_ids[:, :, None] == own_ids[:, None, :]).any(axis=2)] = NO_IMAGE
        return np.concatenate([own_scores, shared_scores], axis=1), np.concatenate([own_ids, extra_ids], axis=1)

    def _solve(self, scores: Scores, ids: Ids) -> tuple[Ids, NDArray[np.float64]]:
        first, ledger = self.ledger.next_frame, self.ledger
        blocked = ids.copy()
        if not ledger.rules.unlimited:
            for (t, j), image_id in np.ndenumerate(ids):
                # The image on screen may continue; whether it does so without a break is checked below.
                if image_id >= 0 and image_id != ledger.current and not ledger.may_start(int(image_id), first + t):
                    blocked[t, j] = NO_IMAGE
        free = np.zeros(ids.shape[0], dtype=np.bool_)
        free[0] = self._starts_at_cut
        while True:
            try:
                path = viterbi(scores, blocked, self.params.switch_cost, free=free, start=ledger.current)
            except OutOfCandidates as exc:
                raise OutOfCandidates(first + exc.frame) from None
            run = self._first_violation(path)
            if run is None:
                break
            banned, begin, end = run
            blocked[begin : end + 1][blocked[begin : end + 1] == banned] = NO_IMAGE
        columns = (blocked == path[:, None]).argmax(axis=1)
        return path, np.asarray(scores[np.arange(path.size), columns], dtype=np.float64)

    def _first_violation(self, path: Ids) -> tuple[int, int, int] | None:
        """(image, first frame, last frame) of the path's first run the rules forbid, in segment frames."""
        if self.ledger.rules.unlimited:
            return None
        ledger = self.ledger.copy()
        first = ledger.next_frame
        values = path.tolist()
        for t, image_id in enumerate(values):
            if not ledger.allowed(int(image_id), first + t):
                end = t
                while end + 1 < len(values) and values[end + 1] == image_id:
                    end += 1
                return image_id, t, end
            ledger.record(image_id)
        return None


def smooth(
    queries: NDArray[np.float32],
    scores: Scores,
    ids: Ids,
    params: SmoothParams,
    *,
    cuts: NDArray[np.bool_],
    scorer: Scorer,
    rules: ReuseRules = UNLIMITED,
    history: Sequence[int] = (),
) -> list[Pick]:
    """Smooth over the frames ``len(history)..`` of a clip (rows of the arrays), committing segment by segment."""
    selector = SmoothSelector(params, scorer, rules, history)
    picks: list[Pick] = []
    for t in range(ids.shape[0]):
        picks.extend(selector.push(queries[t], scores[t], ids[t], cut=bool(cuts[t])))
    picks.extend(selector.finish())
    return picks
