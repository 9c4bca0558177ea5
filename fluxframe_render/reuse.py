"""Reuse rules: how often, and how soon again, one pool image may be shown.

- ``max_uses`` N: an image may be shown in at most N separate runs of frames (no-repeat
  is N = 1). An image held over consecutive frames is one use, however long it is held.
- ``min_gap`` F: at least F frames between the end of one run of an image and the start
  of its next run.

The ledger is rebuilt from the choices alone (``ReuseLedger.replay``), so a resumed render
knows exactly what an uninterrupted one knew. Every check is O(1) (dict lookups), so its
cost stays flat however many images are used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shared.errors import UsageError

NO_IMAGE = -1


@dataclass(frozen=True)
class ReuseRules:
    max_uses: int | None = None  # runs per image; None: unlimited
    min_gap: int = 0  # frames between two runs of one image

    def __post_init__(self) -> None:
        if self.max_uses is not None and self.max_uses < 1:
            raise UsageError(f"--max-uses must be >= 1, got {self.max_uses}")
        if self.min_gap < 0:
            raise UsageError(f"--min-reuse-gap must be >= 0, got {self.min_gap}")

    @property
    def unlimited(self) -> bool:
        return self.max_uses is None and self.min_gap == 0


UNLIMITED = ReuseRules()


class ReuseLedger:
    """Uses of every image so far, the image on screen and the next frame to record."""

    def __init__(self, rules: ReuseRules) -> None:
        self.rules = rules
        self.uses: dict[int, int] = {}
        self.last_shown: dict[int, int] = {}  # image -> last frame it was shown on
        self.current = NO_IMAGE
        self.next_frame = 0

    @classmethod
    def replay(cls, rules: ReuseRules, image_ids: Iterable[int]) -> ReuseLedger:
        """The ledger after frames 0.. showed ``image_ids`` (a checkpoint's choices)."""
        ledger = cls(rules)
        for image_id in image_ids:
            ledger.record(image_id)
        return ledger

    def copy(self) -> ReuseLedger:
        other = ReuseLedger(self.rules)
        other.uses, other.last_shown = dict(self.uses), dict(self.last_shown)
        other.current, other.next_frame = self.current, self.next_frame
        return other

    def allowed(self, image_id: int, frame: int) -> bool:
        """May ``image_id`` be shown on ``frame`` (>= next_frame) after what is recorded?

        Continuing the image on screen into the very next frame is always allowed.
        """
        if image_id == self.current and frame == self.next_frame:
            return True
        return self.may_start(image_id, frame)

    def may_start(self, image_id: int, frame: int) -> bool:
        """May a new run of ``image_id`` start on ``frame``?"""
        rules = self.rules
        if rules.max_uses is not None and self.uses.get(image_id, 0) >= rules.max_uses:
            return False
        last = self.last_shown.get(image_id)
        return last is None or frame - last - 1 >= rules.min_gap

    def used_up(self) -> list[int]:
        """Images that may never be shown again (except continuing the one on screen): for a search's exclusion."""
        if self.rules.max_uses is None:
            return []
        return sorted(i for i, n in self.uses.items() if n >= self.rules.max_uses)

    def record(self, image_id: int) -> None:
        """Account for the image shown on ``next_frame``."""
        if image_id != self.current:
            self.uses[image_id] = self.uses.get(image_id, 0) + 1
            self.current = image_id
        self.last_shown[image_id] = self.next_frame
        self.next_frame += 1


def violations(rules: ReuseRules, image_ids: Iterable[int]) -> list[int]:
    """Frames of a whole sequence of choices that break the rules (for tests and reports)."""
    ledger = ReuseLedger(rules)
    bad = []
    for frame, image_id in enumerate(image_ids):
        if not ledger.allowed(image_id, frame):
            bad.append(frame)
        ledger.record(image_id)
    return bad
