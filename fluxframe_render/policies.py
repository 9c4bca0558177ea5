"""Selection policies: the stage that turns each frame's candidates into the image it shows.

Every policy is a pipeline stage from a searched ``Batch`` to ``Choice`` records, in
frame order. Frames before ``done`` (already in the checkpoint) pass through the earlier
stages of a resumed run only so that batches stay aligned; a policy skips them.

- ``PerFrame`` (``--coherence off``): each frame alone: the best, or with a seed one of
  the top N at random; no-repeat and the reuse rules (select.Selector).
- ``Hold`` (``--coherence hold``): keep the image on screen while it scores within a
  margin of the best (coherence.HoldSelector); choices committed frame by frame.
- ``Smooth`` (``--coherence smooth``): the best sequence of each segment by Viterbi
  (coherence.SmoothSelector); a segment (scene, or window of a long scene) is committed whole.
- ``GlobalAssign`` (``--no-repeat --assign global``): a window of frames as one
  assignment (assign.py).

Each policy says how many frames were committed when a batch starting at frame ``s`` was
searched (``committed_before``): a resumed run searches the batch it re-enters with the
reuse state of exactly those frames, so it sees what the uninterrupted run saw.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.assign import Candidates, assign_window
from fluxframe_render.coherence import (
    HoldParams,
    HoldSelector,
    OutOfCandidates,
    Pick,
    SmoothParams,
    SmoothSelector,
    exact_scorer,
)
from fluxframe_render.match import Batch, FrameMatcher
from fluxframe_render.pipeline import Stage
from fluxframe_render.reuse import ReuseRules
from fluxframe_render.select import Choice, FrameRef, Selector
from shared.search import UsedSet


class Policy(Stage[Batch, Choice]):
    """A selection policy stage; see the module docstring."""

    name = "select"

    @property
    def used(self) -> UsedSet | None:
        """The ids a search must leave out now (None when no reuse rule is in force)."""
        return None

    def committed_before(self, start: int, history: Sequence[Choice]) -> int:
        """Frames committed when the batch starting at ``start`` was searched: all before it, by default."""
        return start


class PerFrame(Policy):
    """``--coherence off``: each frame chooses from its own candidates (select.Selector's rules)."""

    def __init__(self, selector: Selector, matcher: FrameMatcher, done: int) -> None:
        self.selector = selector
        self.matcher = matcher
        self.done = done

    @property
    def used(self) -> UsedSet | None:
        return self.selector.used

    def process(self, item: Batch) -> Iterable[Choice]:
        assert item.queries is not None and item.scores is not None and item.ids is not None
        made = []
        for row, frame in enumerate(item.frames):
            if frame.index < self.done:
                continue
            query = item.queries[row : row + 1]
            choice = self._choose(frame, query, item.scores[row], item.ids[row])
            made.append(_with_cut(choice, item, row))
        return made

    def _choose(
        self, frame: FrameRef, query: NDArray[np.float32], scores: NDArray[np.float32], ids: NDArray[np.int64]
    ) -> Choice:
        matcher, selector = self.matcher, self.selector

        def score_of(image_id: int) -> float:
            return matcher.score_of(query[0], image_id)

        def research() -> Candidates:
            s, i = matcher.candidates(query, selector.used)
            return s[0], i[0]

        return selector.choose(frame, scores, ids, score_of, research)


def _with_cut(choice: Choice, item: Batch, row: int) -> Choice:
    cut = item.cuts is not None and bool(item.cuts[row])
    return dataclasses.replace(choice, cut=True) if cut else choice


class Hold(Policy):
    """``--coherence hold``: hysteresis frame by frame (coherence.HoldSelector), committed frame by frame."""

    def __init__(
        self,
        params: HoldParams,
        rules: ReuseRules,
        history: Sequence[Choice],
        pool_size: int,
        matcher: FrameMatcher,
        done: int,
    ) -> None:
        self.selector = HoldSelector(params, rules, [c.image_id for c in history], pool_size)
        self.matcher = matcher
        self.done = done

    @property
    def used(self) -> UsedSet | None:
        return self.selector.ledger.exclusion

    def process(self, item: Batch) -> Iterable[Choice]:
        assert item.queries is not None and item.scores is not None and item.ids is not None
        assert item.cuts is not None
        made = []
        for row, frame in enumerate(item.frames):
            if frame.index < self.done:
                continue
            query = item.queries[row]
            cut = bool(item.cuts[row])

            def score_of(image_id: int, query: NDArray[np.float32] = query) -> float:
                return self.matcher.score_of(query, image_id)

            try:
                pick = self.selector.choose(item.scores[row], item.ids[row], cut=cut, score_of=score_of)
            except OutOfCandidates:
                # Every candidate of the batch's search is blocked by now: search this frame again.
                scores, ids = self.matcher.candidates(query.reshape(1, -1), self.used)
                pick = self.selector.choose(scores[0], ids[0], cut=cut, score_of=score_of)
            made.append(
                Choice(frame.index, frame.source_index, frame.time, pick.image_id, pick.score, False, None, cut=cut)
            )
        return made


class Smooth(Policy):
    """``--coherence smooth``: Viterbi per segment (coherence.SmoothSelector); each segment committed whole."""

    def __init__(
        self,
        params: SmoothParams,
        rules: ReuseRules,
        history: Sequence[Choice],
        pool_size: int,
        matcher: FrameMatcher,
        done: int,
    ) -> None:
        scorer = exact_scorer(matcher.searcher.vectors)
        self.selector = SmoothSelector(params, scorer, rules, [c.image_id for c in history], pool_size)
        self.params = params
        self.done = done
        self._frames: dict[int, tuple[FrameRef, bool]] = {}

    @property
    def used(self) -> UsedSet | None:
        return self.selector.ledger.exclusion

    def committed_before(self, start: int, history: Sequence[Choice]) -> int:
        # Segments are committed when the frame after them arrives: searching the batch at
        # ``start``, the segment holding frame start - 1 was still open.
        segment = start - 1
        while segment > 0 and not (history[segment].cut or segment % self.params.window == 0):
            segment -= 1
        return max(0, segment)

    def process(self, item: Batch) -> Iterable[Choice]:
        assert item.queries is not None and item.scores is not None and item.ids is not None
        assert item.cuts is not None
        made: list[Choice] = []
        for row, frame in enumerate(item.frames):
            if frame.index < self.done:
                continue
            cut = bool(item.cuts[row])
            self._frames[frame.index] = (frame, cut)
            picks = self.selector.push(item.queries[row], item.scores[row], item.ids[row], cut=cut)
            made.extend(self._choices(picks, "cut" if cut else "chunk"))
        return made

    def finish(self) -> Iterable[Choice]:
        return self._choices(self.selector.finish(), "cut")

    def _choices(self, picks: Sequence[Pick], end: str) -> list[Choice]:
        made = []
        for position, pick in enumerate(picks):
            frame, cut = self._frames.pop(pick.frame)
            last = position == len(picks) - 1
            made.append(
                Choice(
                    frame.index,
                    frame.source_index,
                    frame.time,
                    pick.image_id,
                    pick.score,
                    False,
                    None,
                    scene_end=end if last else None,
                    cut=cut,
                )
            )
        return made


class GlobalAssign(Policy):
    """``--assign global``: the frames of a window chosen together once the window is full (assign.py).

    It searches itself (the whole window's candidates, then what the assignment asks for),
    so it follows the describe stage directly. A window is committed whole.
    """

    name = "assign"

    def __init__(self, selector: Selector, matcher: FrameMatcher, size: int, batch: int, done: int) -> None:
        self.selector = selector
        self.matcher = matcher
        self.size = size  # 0: the whole clip is one window
        self.batch = batch
        self.done = done
        self.frames: list[FrameRef] = []
        self._queries: list[NDArray[np.float32]] = []
        self._scores: list[NDArray[np.float32]] = []
        self._ids: list[NDArray[np.int64]] = []
        self.solve_seconds = 0.0

    def process(self, item: Batch) -> Iterable[Choice]:
        assert item.queries is not None
        scores, ids = self.matcher.candidates(item.queries, self.selector.used)
        keep = [row for row, frame in enumerate(item.frames) if frame.index >= self.done]
        self.frames.extend(item.frames[row] for row in keep)
        self._queries.append(item.queries[keep])
        self._scores.append(scores[keep])
        self._ids.append(ids[keep])
        # Windows are whole batches, so a batch fills one exactly.
        return self._solve() if self.size > 0 and len(self.frames) >= self.size else ()

    def finish(self) -> Iterable[Choice]:
        return self._solve() if self.frames else ()

    def _scorer(self, query: NDArray[np.float32]) -> Callable[[int], float]:
        return lambda image_id: self.matcher.score_of(query, image_id)

    def _solve(self) -> list[Choice]:
        used = self.selector.used
        assert used is not None, "--assign global runs with no-repeat"
        started = time.perf_counter()
        queries = np.concatenate(self._queries)

        def research(rows: NDArray[np.intp], k: int, excluded: UsedSet) -> Candidates:
            return self.matcher.candidates(queries[rows], excluded, k)

        result = assign_window(
            np.concatenate(self._scores), np.concatenate(self._ids), used, research, batch=self.batch
        )
        choices = [
            self.selector.assigned(
                frame,
                int(result.image_ids[row]),
                float(result.scores[row]),
                self._scorer(queries[row]),
                greedy_score=float(result.greedy_scores[row]),
            )
            for row, frame in enumerate(self.frames)
        ]
        # The window is one unit of the checkpoint: a resumed run starts at a window's start.
        choices[-1] = dataclasses.replace(choices[-1], scene_end="chunk")
        self.frames, self._queries, self._scores, self._ids = [], [], [], []
        self.solve_seconds += time.perf_counter() - started
        return choices
