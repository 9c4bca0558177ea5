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

from fluxframe_render.reuse import ReuseLedger, ReuseRules
from shared.errors import StateError, UsageError
from shared.search import UsedSet

HELD = "held"
FIRST_BELOW_THRESHOLD = "first_below_threshold"
FALLBACKS = (None, HELD, FIRST_BELOW_THRESHOLD)
SCENE_ENDS = (None, "cut", "chunk")


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
    # The last frame of a unit of choices committed together (a smoothed segment, an assigned
    # window): "cut" (a new scene follows) or "chunk". A resumed run starts after such a frame.
    scene_end: str | None = None
    cut: bool = False  # a scene starts at this frame (scenes.py): colour smoothing restarts here

    @property
    def unit_end(self) -> bool:
        return self.scene_end is not None

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
        if self.scene_end is not None:
            data["scene_end"] = self.scene_end
        if self.cut:
            data["cut"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        fallback = data["fallback"]
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}")
        if data.get("scene_end") not in SCENE_ENDS:
            raise ValueError(f"unknown scene end {data.get('scene_end')!r}")
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
            scene_end=data.get("scene_end"),
            cut=bool(data.get("cut", False)),
        )


@dataclass(frozen=True)
class SelectionPolicy:
    no_repeat: bool
    search_depth: int
    threshold: float
    seed: int
    max_uses: int = 0  # 0: no limit; no_repeat means 1
    min_gap: int = 0  # frames before a shown image may come back

    @property
    def uses_limit(self) -> int:
        return 1 if self.no_repeat else self.max_uses

    @property
    def rules(self) -> ReuseRules:
        return ReuseRules(max_uses=self.uses_limit or None, min_gap=self.min_gap)

    def __post_init__(self) -> None:
        if self.search_depth < 1:
            raise UsageError(f"search depth must be >= 1, got {self.search_depth}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.seed < 0:
            raise UsageError(f"seed must be >= 0, got {self.seed}")


Candidates = tuple[NDArray[np.float32], NDArray[np.int64]]


class Selector:
    """Stateful chooser: remembers reuse (no-repeat, --max-uses, --min-reuse-gap) and the previous frame's image."""

    def __init__(self, policy: SelectionPolicy, pool_size: int, history: list[Choice] | None = None) -> None:
        self.policy = policy
        self.ledger = ReuseLedger(policy.rules, pool_size)
        self.previous: Choice | None = None
        for choice in history or []:
            self.record(choice)

    @property
    def used(self) -> UsedSet | None:
        """The ids a search must leave out now (None when no reuse rule is in force)."""
        return self.ledger.exclusion

    def record(self, choice: Choice) -> None:
        """Account for a choice made earlier (checkpoint replay) or just now."""
        self.ledger.record(choice.image_id)
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
        ``research()`` searches this frame alone with the current blocked ids excluded.
        """
        valid = self._valid(ids)
        if not valid.any():
            if self.used is not None:
                scores, ids = research()
                valid = self._valid(ids)
            if not valid.any():
                raise StateError(self._exhausted(frame))
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

    def _valid(self, ids: NDArray[np.int64]) -> NDArray[np.bool_]:
        valid = ids >= 0
        if self.used is not None:
            safe = np.where(valid, ids, 0)
            # Per-frame picks never continue a blocked image: with --no-repeat every frame shows a new one.
            valid &= ~self.used.bits[safe]
        return valid

    def _exhausted(self, frame: FrameRef) -> str:
        if self.used is None:
            return f"no candidate image for output frame {frame.index}: the pool is empty"
        if self.policy.uses_limit == 1:
            return (
                f"--no-repeat ran out of images at output frame {frame.index}: all {self.used.count} usable images "
                "are taken"
            )
        return (
            f"the reuse rules left no image for output frame {frame.index} ({self.used.count} images blocked); "
            "raise --max-uses or lower --min-reuse-gap"
        )

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
