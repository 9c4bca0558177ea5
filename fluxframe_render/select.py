"""Choose one pool image per output frame from its ranked candidates.

Three rules, applied frame by frame in output order:

- Random (default): a uniform pick among the top ``search_depth`` candidates, drawn
  from a generator seeded with ``(seed, frame index)``. Each frame's draw depends on
  nothing but the seed and its index, so a resumed render draws exactly what an
  uninterrupted one would.
- No-repeat: the best candidate no earlier frame has taken. The caller searches with
  used ids excluded; this module also skips ids taken earlier in the same batch and,
  should a frame run out of candidates, asks for a fresh search of that frame alone.
- Threshold T > 0: a frame whose best candidate scores below T does not take it; it
  holds the image the previous frame shows (recorded as ``fallback = "held"``), so a
  poor match never flashes in. A held image is not a new use: with no-repeat it is
  the same image continuing, not a duplicate pick. The very first frame has nothing to
  hold, so it takes its best candidate anyway (``fallback = "first_below_threshold"``).
  In random mode, candidates below T are never drawn.

With ``--assign global`` (see assign.py) the images of a window of frames are chosen
together; ``Selector.assigned`` then records each frame's assigned image under the same
threshold rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared.errors import StateError, UsageError
from shared.search import UsedSet

HELD = "held"
FIRST_BELOW_THRESHOLD = "first_below_threshold"
FALLBACKS = (None, HELD, FIRST_BELOW_THRESHOLD)


@dataclass(frozen=True)
class FrameRef:
    """Where an output frame comes from in the source video."""

    index: int  # output frame index
    source_index: int  # decoded source frame it shows
    time: float  # source time in seconds


@dataclass(frozen=True)
class Choice:
    """The image chosen for one output frame, as checkpointed and reported."""

    index: int
    source_index: int
    time: float
    image_id: int
    score: float  # weighted similarity of the shown image to this frame
    threshold_applied: bool  # the best (or assigned) candidate scored below the threshold
    fallback: str | None  # one of FALLBACKS
    greedy_score: float | None = None  # --assign global: what greedy no-repeat would have scored here

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "index": self.index,
            "source_index": self.source_index,
            "time": self.time,
            "image_id": self.image_id,
            "score": self.score,
            "threshold_applied": self.threshold_applied,
            "fallback": self.fallback,
        }
        if self.greedy_score is not None:
            data["greedy_score"] = self.greedy_score
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        fallback = data["fallback"]
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}")
        greedy = data.get("greedy_score")
        return cls(
            index=int(data["index"]),
            source_index=int(data["source_index"]),
            time=float(data["time"]),
            image_id=int(data["image_id"]),
            score=float(data["score"]),
            threshold_applied=bool(data["threshold_applied"]),
            fallback=fallback,
            greedy_score=None if greedy is None else float(greedy),
        )


@dataclass(frozen=True)
class SelectionPolicy:
    no_repeat: bool
    search_depth: int
    threshold: float
    seed: int

    def __post_init__(self) -> None:
        if self.search_depth < 1:
            raise UsageError(f"search depth must be >= 1, got {self.search_depth}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")


Candidates = tuple[NDArray[np.float32], NDArray[np.int64]]


class Selector:
    """Stateful chooser: remembers used ids (no-repeat) and the previous frame's image (threshold)."""

    def __init__(self, policy: SelectionPolicy, pool_size: int, history: list[Choice] | None = None) -> None:
        self.policy = policy
        self.used = UsedSet(pool_size) if policy.no_repeat else None
        self.previous: Choice | None = None
        for choice in history or []:
            self.record(choice)

    def record(self, choice: Choice) -> None:
        """Account for a choice made earlier (checkpoint replay) or just now."""
        if self.used is not None:
            self.used.add(choice.image_id)
        self.previous = choice

    def choose(
        self,
        frame: FrameRef,
        scores: NDArray[np.float32],
        ids: NDArray[np.int64],
        score_of: Callable[[int], float],
        research: Callable[[], Candidates],
    ) -> Choice:
        """Pick for ``frame`` from its ranked candidates (best first, id -1 = none).

        ``score_of(id)`` scores any image against this frame (for a held image);
        ``research()`` searches this frame alone with the current used ids excluded.
        """
        valid = ids >= 0
        if self.used is not None:
            valid &= ~self.used.bits[np.where(valid, ids, 0)]
            if not valid.any():
                scores, ids = research()
                valid = (ids >= 0) & ~self.used.bits[np.where(ids >= 0, ids, 0)]
                if not valid.any():
                    raise StateError(
                        f"--no-repeat ran out of images at output frame {frame.index}: all "
                        f"{self.used.count} usable images are taken"
                    )
        elif not valid.any():
            raise StateError(f"no candidate image for output frame {frame.index}: the pool is empty")
        positions = np.flatnonzero(valid)
        best = int(positions[0])
        best_score = float(scores[best])
        threshold = self.policy.threshold
        below = threshold > 0 and best_score < threshold
        if below and self.previous is not None:
            held = self.previous.image_id
            choice = Choice(frame.index, frame.source_index, frame.time, held, score_of(held), True, HELD)
        elif below:
            choice = Choice(
                frame.index, frame.source_index, frame.time, int(ids[best]), best_score, True, FIRST_BELOW_THRESHOLD
            )
        else:
            pick = best if self.used is not None else self._draw(frame.index, positions, scores)
            image_id, score = int(ids[pick]), float(scores[pick])
            choice = Choice(frame.index, frame.source_index, frame.time, image_id, score, False, None)
        self.record(choice)
        return choice

    def assigned(
        self,
        frame: FrameRef,
        image_id: int,
        score: float,
        score_of: Callable[[int], float],
        *,
        greedy_score: float,
    ) -> Choice:
        """Record the image a global assignment gave ``frame``, under the threshold rule of ``choose``.

        A frame below the threshold holds the previous image; the image it was assigned
        is then not shown, so it is not used up for later windows.
        """
        below = self.policy.threshold > 0 and score < self.policy.threshold
        at = (frame.index, frame.source_index, frame.time)
        if below and self.previous is not None:
            held = self.previous.image_id
            choice = Choice(*at, held, score_of(held), True, HELD, greedy_score)
        elif below:
            choice = Choice(*at, image_id, score, True, FIRST_BELOW_THRESHOLD, greedy_score)
        else:
            choice = Choice(*at, image_id, score, False, None, greedy_score)
        self.record(choice)
        return choice

    def _draw(self, index: int, positions: NDArray[np.intp], scores: NDArray[np.float32]) -> int:
        eligible = positions[: self.policy.search_depth]
        if self.policy.threshold > 0:
            eligible = eligible[scores[eligible] >= self.policy.threshold]
        rng = np.random.default_rng([self.policy.seed, index])
        return int(eligible[int(rng.integers(eligible.size))])
