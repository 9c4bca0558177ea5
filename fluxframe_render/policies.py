"""Selection policies: the stage that turns each frame's candidates into the image it shows.

Every policy is a pipeline stage from a searched ``Batch`` to ``Choice`` records, in
frame order. Frames before ``done`` (already in the checkpoint) pass through the earlier
stages of a resumed run only so that batches stay aligned; a policy skips them.

- ``PerFrame`` (``--coherence off``): each frame alone: the best, or with a seed one of
  the top N at random; no-repeat and the reuse rules (select.Selector).
- ``GlobalAssign`` (``--no-repeat --assign global``): a window of frames as one
  assignment (assign.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.assign import Candidates, assign_window
from fluxframe_render.match import Batch, FrameMatcher
from fluxframe_render.pipeline import Stage
from fluxframe_render.select import Choice, FrameRef, Selector
from shared.search import UsedSet


class PerFrame(Stage[Batch, Choice]):
    """``--coherence off``: each frame chooses from its own candidates (select.Selector's rules)."""

    name = "select"

    def __init__(self, selector: Selector, matcher: FrameMatcher, done: int) -> None:
        self.selector = selector
        self.matcher = matcher
        self.done = done

    def process(self, item: Batch) -> Iterable[Choice]:
        assert item.queries is not None and item.scores is not None and item.ids is not None
        made = []
        for row, frame in enumerate(item.frames):
            if frame.index < self.done:
                continue
            query = item.queries[row : row + 1]
            made.append(self._choose(frame, query, item.scores[row], item.ids[row]))
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


class GlobalAssign(Stage[Batch, Choice]):
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
