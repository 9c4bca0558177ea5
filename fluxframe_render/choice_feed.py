"""Committed choices handed from the match phase to an output phase that runs beside it.

The match phase appends each batch of choices once the checkpoint holds them (and, in
tile mode, their grids); the output phase reads them in order, waiting for the next one
when it has caught up. So the output never shows a choice a resumed run could make
differently, and composing and encoding overlap matching instead of following it.

The feed ends one of three ways: ``close`` (the match phase finished: readers see the
end), ``fail`` (it stopped early: readers raise MatchStopped, so no output is finalised
from part of the video) or ``cancel`` (the output side is stopping: a reader blocked on
the next choice wakes up and sees the end).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.select import Choice

Grid = NDArray[np.int32]


class MatchStopped(Exception):
    """The match phase stopped before the end: the output phase must not finish."""


class ChoiceFeed:
    """Choices in frame order, as they are committed; thread-safe, many readers."""

    def __init__(self, committed: Sequence[Choice] = (), grids: Sequence[Grid] | None = None) -> None:
        self._choices: list[Choice] = list(committed)
        self._grids: list[Grid] | None = None if grids is None else list(grids)
        if self._grids is not None and len(self._grids) != len(self._choices):
            raise ValueError(f"{len(self._grids)} tile grids for {len(self._choices)} choices")
        self._changed = threading.Condition()
        self._closed = False
        self._failed = False
        self._cancelled = False

    @classmethod
    def complete(cls, choices: Sequence[Choice], grids: Sequence[Grid] | None = None) -> ChoiceFeed:
        """A feed of a finished match: every choice already there."""
        feed = cls(choices, grids)
        feed.close()
        return feed

    def add(self, choices: Sequence[Choice], grids: Sequence[Grid] | None = None) -> None:
        """Choices just committed (with their tile grids when the feed carries grids)."""
        with self._changed:
            if self._grids is not None:
                if grids is None or len(grids) != len(choices):
                    raise ValueError("a tile feed needs one grid per choice")
                self._grids.extend(grids)
            self._choices.extend(choices)
            self._changed.notify_all()

    def close(self) -> None:
        """No more choices: the match phase is complete."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def fail(self) -> None:
        """The match phase stopped early (an error, Ctrl-C)."""
        with self._changed:
            self._failed = True
            self._changed.notify_all()

    def cancel(self) -> None:
        """The reading side is stopping: wake whoever waits for a choice."""
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()

    @property
    def count(self) -> int:
        """Choices committed so far."""
        with self._changed:
            return len(self._choices)

    @property
    def complete_count(self) -> int | None:
        """How many choices there are in all, once the match phase is complete; None before."""
        with self._changed:
            return len(self._choices) if self._closed else None

    def get(self, position: int) -> Choice | None:
        """The choice at ``position``, waiting for it; None past the end (or once cancelled)."""
        with self._changed:
            while True:
                if position < len(self._choices):
                    return self._choices[position]
                if self._failed:
                    raise MatchStopped("matching stopped before the end of the video")
                if self._closed or self._cancelled:
                    return None
                self._changed.wait()

    def ready(self, position: int) -> Choice | None:
        """The choice at ``position`` if it is committed already; never waits."""
        with self._changed:
            return self._choices[position] if position < len(self._choices) else None

    def grid(self, position: int) -> Grid:
        """The tile grid of the choice at ``position`` (committed already)."""
        with self._changed:
            if self._grids is None:
                raise ValueError("this feed carries no tile grids")
            return self._grids[position]

    def __iter__(self) -> Iterator[Choice]:
        position = 0
        while (choice := self.get(position)) is not None:
            yield choice
            position += 1

    def choices(self) -> list[Choice]:
        """Every choice committed so far (all of them once closed)."""
        with self._changed:
            return list(self._choices)


class FeedGrids:
    """``grids[frame_index]`` over a feed, for the tile composer (frame indices are feed positions)."""

    def __init__(self, feed: ChoiceFeed) -> None:
        self.feed = feed

    def __getitem__(self, index: int) -> Grid:
        return self.feed.grid(index)
