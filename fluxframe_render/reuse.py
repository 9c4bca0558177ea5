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

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from shared.errors import UsageError
from shared.search import UsedSet

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
    """Uses of every image so far, the image on screen and the next frame to record.

    ``blocked`` is the set a search leaves out: every image that may not start a new run
    at ``next_frame`` (used up, or inside its reuse gap), the one on screen included (it
    can only continue). It changes in O(1) per frame: the cost stays flat as images are used.
    """

    def __init__(self, rules: ReuseRules, pool_size: int = 0) -> None:
        self.rules = rules
        self.uses: dict[int, int] = {}
        self.last_shown: dict[int, int] = {}  # image -> last frame it was shown on
        self.current = NO_IMAGE
        self.next_frame = 0
        self.blocked = UsedSet(pool_size if not rules.unlimited else 0)
        self._releases: deque[tuple[int, int]] = deque()  # (frame it may start again on, image), in order

    @classmethod
    def replay(cls, rules: ReuseRules, image_ids: Iterable[int], pool_size: int = 0) -> ReuseLedger:
        """The ledger after frames 0.. showed ``image_ids`` (a checkpoint's choices)."""
        ledger = cls(rules, pool_size)
        for image_id in image_ids:
            ledger.record(image_id)
        return ledger

    def copy(self) -> ReuseLedger:
        other = ReuseLedger(self.rules)
        other.uses, other.last_shown = dict(self.uses), dict(self.last_shown)
        other.current, other.next_frame = self.current, self.next_frame
        other.blocked, other._releases = self.blocked.copy(), deque(self._releases)
        return other

    @property
    def exclusion(self) -> UsedSet | None:
        """What a search must leave out now; None when no rule is in force (nothing to leave out)."""
        return None if self.rules.unlimited else self.blocked

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

    def record(self, image_id: int) -> None:
        """Account for the image shown on ``next_frame``."""
        if image_id != self.current:
            self.uses[image_id] = self.uses.get(image_id, 0) + 1
            self.current = image_id
        self.last_shown[image_id] = self.next_frame
        self.next_frame += 1
        if self.blocked.size:
            self._block(image_id)

    def _block(self, image_id: int) -> None:
        """Keep ``blocked`` equal to the images that may not start a run on ``next_frame``."""
        rules = self.rules
        if rules.max_uses is not None and self.uses[image_id] >= rules.max_uses:
            self.blocked.add(image_id)  # used up: for good
        elif rules.min_gap > 0:
            self.blocked.add(image_id)
            self._releases.append((self.last_shown[image_id] + rules.min_gap + 1, image_id))
        while self._releases and self._releases[0][0] <= self.next_frame:
            _, image = self._releases.popleft()
            # Shown again since (a later release is queued) or used up meanwhile: it stays blocked.
            if self.may_start(image, self.next_frame):
                self.blocked.discard(image)


def violations(rules: ReuseRules, image_ids: Iterable[int]) -> list[int]:
    """Frames of a whole sequence of choices that break the rules (for tests and reports)."""
    ledger = ReuseLedger(rules)
    bad = []
    for frame, image_id in enumerate(image_ids):
        if not ledger.allowed(image_id, frame):
            bad.append(frame)
        ledger.record(image_id)
    return bad
