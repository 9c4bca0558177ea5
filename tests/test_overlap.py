"""The output phase running beside the match phase: the feed of committed choices, cancelling a
run from another thread, and which failure a render reports when one phase stops the other."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import numpy as np
import pytest

from fluxframe_render.choice_feed import ChoiceFeed, FeedGrids, MatchStopped
from fluxframe_render.overlap import Overlap
from fluxframe_render.pipeline import RunCancelled, Runner, Source, Stage
from fluxframe_render.select import Choice
from shared.errors import UsageError

WAIT = 10.0  # seconds a test waits for the other thread before calling it stuck


def _choice(index: int, image_id: int | None = None) -> Choice:
    return Choice(index, index, index / 25, index if image_id is None else image_id, 0.5, False, None)


def _reader(feed: ChoiceFeed, seen: list[int], first_seen: threading.Event | None = None) -> threading.Thread:
    def read() -> None:
        for choice in feed:
            seen.append(choice.index)
            if first_seen is not None:
                first_seen.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_reader_gets_each_choice_as_it_is_committed_and_the_end_when_closed() -> None:
    feed = ChoiceFeed([_choice(0), _choice(1)])
    seen: list[int] = []
    first = threading.Event()
    reader = _reader(feed, seen, first)
    assert first.wait(WAIT)
    feed.add([_choice(2)])
    deadline = time.monotonic() + WAIT
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert seen == [0, 1, 2] and reader.is_alive(), "the reader must wait for more, not end"
    assert feed.complete_count is None
    feed.close()
    reader.join(WAIT)
    assert not reader.is_alive() and feed.complete_count == 3


def test_a_failed_match_makes_a_waiting_reader_raise_instead_of_ending() -> None:
    """Ending normally would let the output finish an MP4 of part of the video."""
    feed = ChoiceFeed([_choice(0)])
    assert feed.get(0) == _choice(0)
    raised: list[BaseException] = []

    def read() -> None:
        try:
            feed.get(1)
        except MatchStopped as exc:
            raised.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    feed.fail()
    thread.join(WAIT)
    assert len(raised) == 1
    assert feed.ready(0) == _choice(0), "committed choices stay readable"


def test_cancel_wakes_a_waiting_reader_with_the_end() -> None:
    feed = ChoiceFeed()
    seen: list[int] = []
    reader = _reader(feed, seen)
    feed.cancel()
    reader.join(WAIT)
    assert not reader.is_alive() and seen == []


def test_tile_grids_travel_with_their_choices() -> None:
    grids = [np.full((2, 3), i, dtype=np.int32) for i in range(3)]
    feed = ChoiceFeed([_choice(0)], grids[:1])
    feed.add([_choice(1), _choice(2)], grids[1:])
    lookup = FeedGrids(feed)
    assert [int(lookup[i][0, 0]) for i in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="one grid per choice"):
        feed.add([_choice(3)])
    with pytest.raises(ValueError, match="no tile grids"):
        ChoiceFeed([_choice(0)]).grid(0)


class _Endless(Source[int]):
    name = "endless"

    def items(self) -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1
            time.sleep(0.001)


class _Recording(Stage[int, int]):
    name = "record"

    def __init__(self) -> None:
        self.finished = False
        self.closed = False
        self.items = 0

    def process(self, item: int) -> Iterable[int]:
        self.items += 1
        return (item,)

    def finish(self) -> Iterable[int]:
        self.finished = True
        return ()

    def close(self) -> None:
        self.closed = True


def test_a_cancelled_run_closes_its_stages_without_finishing_them() -> None:
    """finish() completes an output (renames the MP4): a cancelled run must only close()."""
    stage = _Recording()
    runner = Runner(_Endless(), [stage])
    raised: list[BaseException] = []

    def run() -> None:
        try:
            runner.run()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while stage.items < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    runner.cancel()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], RunCancelled)
    assert stage.closed and not stage.finished


class _FeedSource(Source[Choice]):
    """An output phase's source: the feed's choices, waiting for them (as ChoiceFrames does)."""

    name = "choices"

    def __init__(self, feed: ChoiceFeed) -> None:
        self.feed = feed

    def items(self) -> Iterator[Choice]:
        yield from self.feed

    def cancel(self) -> None:
        self.feed.cancel()


class _Collect(Stage[Choice, Choice]):
    name = "collect"
    threaded = True

    def __init__(self, first_seen: threading.Event | None = None, fail_at: int | None = None) -> None:
        self.indices: list[int] = []
        self.first_seen = first_seen
        self.fail_at = fail_at
        self.finished = False

    def process(self, item: Choice) -> Iterable[Choice]:
        if item.index == self.fail_at:
            raise OSError("disk full")
        self.indices.append(item.index)
        if self.first_seen is not None:
            self.first_seen.set()
        return ()

    def finish(self) -> Iterable[Choice]:
        self.finished = True
        return ()


def test_output_shows_committed_choices_while_matching_still_runs() -> None:
    feed = ChoiceFeed()
    overlap = Overlap(progress=False, overlapped=True)
    first_seen = threading.Event()
    collect = _Collect(first_seen)
    seen_before_the_end: list[bool] = []

    def match() -> int:
        feed.add([_choice(0)])
        # Without overlap this would wait the whole WAIT and record False.
        seen_before_the_end.append(first_seen.wait(WAIT))
        feed.add([_choice(1), _choice(2)])
        return 3

    def output() -> list[int]:
        Runner(_FeedSource(feed), [collect]).run()
        return collect.indices

    made, shown = overlap.together(match, output, feed)
    assert made == 3 and shown == [0, 1, 2] and collect.finished
    assert seen_before_the_end == [True]


def test_a_match_that_fails_stops_the_output_with_the_match_s_own_error() -> None:
    feed = ChoiceFeed()
    overlap = Overlap(progress=False, overlapped=True)
    collect = _Collect()

    def match() -> int:
        feed.add([_choice(0), _choice(1)])
        raise UsageError("the tile reuse rules cannot be met")

    def output() -> None:
        Runner(_FeedSource(feed), [collect]).run()

    with pytest.raises(UsageError, match="cannot be met"):
        overlap.together(match, output, feed)
    assert not collect.finished, "an output of part of the video must not be completed"


def test_an_output_that_fails_cancels_the_match_which_still_closes_its_stages() -> None:
    feed = ChoiceFeed()
    overlap = Overlap(progress=False, overlapped=True)
    matched = _Recording()

    class _Commit(Stage[int, int]):
        name = "commit"

        def process(self, item: int) -> Iterable[int]:
            feed.add([_choice(item)])
            return ()

    def match() -> None:
        overlap.run(Runner(_Endless(), [matched, _Commit()]))

    def output() -> None:
        Runner(_FeedSource(feed), [_Collect(fail_at=20)]).run()

    with pytest.raises(OSError, match="disk full"):
        overlap.together(match, output, feed)
    assert matched.closed and not matched.finished
