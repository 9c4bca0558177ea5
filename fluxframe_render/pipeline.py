"""The one runner of ff-render: a source, then stages, each a small class with one job.

A stage turns each item it receives into zero or more items for the next stage
(``process``), may hand out what it still holds when the stream ends (``finish``: a
scene being smoothed, a window being assigned), and is always closed (``close``), on
success, error or Ctrl-C alike, so that a checkpoint stage can save what is complete.

The runner splits the chain into segments at the stages marked ``threaded``: each
segment runs in its own thread, segments are joined by bounded queues (so memory holds
at most ``QUEUE_DEPTH`` items between two segments), and the last segment runs in the
caller's thread. The source starts the first segment: a threaded first stage leaves it
alone in its thread (decoding overlaps what the first stage does with the items before).
Decoding, feature extraction, FAISS, OpenCV and FFmpeg all release the GIL, so segments
overlap on separate cores. Per stage it records the seconds spent busy
and the seconds spent waiting for input, which results.json and ``--timings`` report.

An error in any segment stops the others and is raised in the caller's thread; the
first error wins.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - the conventional name of a stage's input type
O = TypeVar("O")  # noqa: E741

QUEUE_DEPTH = 4
_END = object()


@dataclass
class StageTiming:
    """Seconds a stage spent working and waiting for its input, and the items it received."""

    busy: float = 0.0
    waiting: float = 0.0
    items: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return {"busy_s": round(self.busy, 4), "waiting_s": round(self.waiting, 4), "items": self.items}


class Source(ABC, Generic[O]):
    """Where a pipeline's items come from (a video's frames, a checkpoint's choices)."""

    name = "source"
    # Seconds ``items`` spent waiting for input from elsewhere (choices still being matched), not
    # producing: the runner reports them as the source's waiting time instead of busy time.
    waited: float = 0.0

    @abstractmethod
    def items(self) -> Iterator[O]: ...

    def close(self) -> None:
        """Release what the source holds; called once, however the run ends."""

    def cancel(self) -> None:
        """The run is stopping: wake the source if it waits for input (not for decoding, which ends)."""


class Stage(ABC, Generic[I, O]):
    """One job between the source and the end of the pipeline."""

    name = "stage"
    threaded = False  # start a new thread (segment) at this stage

    @abstractmethod
    def process(self, item: I) -> Iterable[O]: ...

    def finish(self) -> Iterable[O]:
        """Items still held when the input ends."""
        return ()

    def close(self) -> None:
        """Called once, however the run ends (after ``finish`` on success)."""


@dataclass
class RunTimings:
    stages: dict[str, StageTiming] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 4), "stages": {k: v.to_dict() for k, v in self.stages.items()}}

    def lines(self) -> list[str]:
        """One line per stage, for --timings."""
        out = []
        for name, t in self.stages.items():
            per = f", {1000 * t.busy / t.items:.2f} ms/item" if t.items else ""
            out.append(f"{name:>16}: busy {t.busy:7.2f} s, waiting {t.waiting:7.2f} s, {t.items} items{per}")
        return out


class _Stopped(Exception):
    """Raised inside a segment when another segment failed: stop quietly."""


class RunCancelled(Exception):
    """The run was stopped from outside (``Runner.cancel``) before its source ended."""


class _Channel:
    """A bounded queue between two segments that gives up when the run is stopping."""

    def __init__(self, stop: threading.Event) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_DEPTH)
        self._stop = stop

    def put(self, item: object) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self) -> object:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                continue


def _feed(stages: Sequence[Stage[Any, Any]], timings: Sequence[StageTiming], item: object) -> Iterator[object]:
    """Push one item through ``stages`` (depth first), yielding what comes out of the last one."""
    if not stages:
        yield item
        return
    stage, timing = stages[0], timings[0]
    timing.items += 1
    started = time.perf_counter()
    outputs = list(stage.process(item))
    timing.busy += time.perf_counter() - started
    for out in outputs:
        yield from _feed(stages[1:], timings[1:], out)


def _drain(stages: Sequence[Stage[Any, Any]], timings: Sequence[StageTiming]) -> Iterator[object]:
    """End of input: each stage in turn hands out what it holds, which the later stages process."""
    for position, (stage, timing) in enumerate(zip(stages, timings, strict=True)):
        started = time.perf_counter()
        held = list(stage.finish())
        timing.busy += time.perf_counter() - started
        for out in held:
            yield from _feed(stages[position + 1 :], timings[position + 1 :], out)


class Runner:
    """Runs ``source`` through ``stages``; see the module docstring."""

    def __init__(self, source: Source[Any], stages: Sequence[Stage[Any, Any]]) -> None:
        self.source = source
        self.stages = list(stages)
        self.timings = RunTimings({source.name: StageTiming(), **{s.name: StageTiming() for s in self.stages}})
        self._stop = threading.Event()
        self._cancelled = False

    def cancel(self) -> None:
        """Stop a run going on in another thread: its ``run`` raises RunCancelled (stages are closed as always)."""
        self._cancelled = True
        self._stop.set()
        self.source.cancel()

    def _segments(self) -> list[list[Stage[Any, Any]]]:
        # A threaded first stage leaves the first segment empty: the source then runs alone in
        # its own thread (decoding while the stages describe or compose the items before).
        segments: list[list[Stage[Any, Any]]] = [[]]
        for stage in self.stages:
            if stage.threaded:
                segments.append([])
            segments[-1].append(stage)
        return segments

    def run(self) -> RunTimings:
        started = time.perf_counter()
        segments = self._segments()
        stop = self._stop
        errors: list[BaseException] = []
        channels = [_Channel(stop) for _ in segments]  # channels[i] feeds segments[i]
        source_timing = self.timings.stages[self.source.name]

        def source_items() -> Iterator[object]:
            it = self.source.items()
            while True:
                if stop.is_set():
                    raise _Stopped  # a source alone with the last segment has no channel to notice it
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    source_timing.busy += time.perf_counter() - t0
                    return
                source_timing.busy += time.perf_counter() - t0
                source_timing.items += 1
                yield item

        def channel_items(channel: _Channel, first: Stage[Any, Any]) -> Iterator[object]:
            timing = self.timings.stages[first.name]
            while True:
                t0 = time.perf_counter()
                item = channel.get()
                timing.waiting += time.perf_counter() - t0
                if item is _END:
                    return
                yield item

        def run_segment(position: int, inputs: Iterator[object], out: _Channel | None) -> None:
            stages = segments[position]
            timings = [self.timings.stages[s.name] for s in stages]
            for item in inputs:
                for result in _feed(stages, timings, item):
                    if out is not None:
                        out.put(result)
            if stop.is_set():
                raise _Stopped  # input cut short by a stop (a cancelled source ends early): never finish on it
            for result in _drain(stages, timings):
                if out is not None:
                    out.put(result)
            if out is not None:
                out.put(_END)

        def guarded(position: int, inputs: Iterator[object], out: _Channel | None) -> None:
            try:
                run_segment(position, inputs, out)
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the caller's thread, which re-raises it
                if not errors:
                    errors.append(exc)
                stop.set()

        threads = []
        for position in range(len(segments) - 1):
            inputs = source_items() if position == 0 else channel_items(channels[position], segments[position][0])
            thread = threading.Thread(
                target=guarded,
                args=(position, inputs, channels[position + 1]),
                name=f"ff-render-{segments[position][0].name if segments[position] else self.source.name}",
                daemon=True,
            )
            threads.append(thread)
        last = len(segments) - 1
        last_inputs = source_items() if last == 0 else channel_items(channels[last], segments[last][0])
        try:
            for thread in threads:
                thread.start()
            with contextlib.suppress(_Stopped):
                run_segment(last, last_inputs, None)
            if errors:
                raise errors[0]
            if self._cancelled:
                raise RunCancelled
        except BaseException as exc:
            if errors and exc is not errors[0]:
                raise errors[0] from None
            raise
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                self.source.cancel()  # a source waiting for input must not keep its thread from ending
            for thread in threads:
                thread.join()
            with contextlib.suppress(Exception):
                self.source.close()
            for stage in reversed(self.stages):
                stage.close()
            source_timing.busy = max(0.0, source_timing.busy - self.source.waited)
            source_timing.waiting += self.source.waited
            self.timings.seconds = time.perf_counter() - started
        return self.timings
