"""The output phase's source and composer: choices (+ source frames) -> output pictures.

The output phase reads only the checkpoint's choices and, when a later stage needs them
(colour transfer, quality metrics, samples, the report), the source frames decoded again
at full size: no matching happens here, so output options re-render in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fluxframe_render.choice_feed import ChoiceFeed
from fluxframe_render.color_transfer import ColorTransfer
from fluxframe_render.compose import SOURCE_WIDTH, MatchedImages
from fluxframe_render.pipeline import Source, Stage
from fluxframe_render.select import Choice
from fluxframe_render.video import FrameReader
from shared.features.base import Image
from shared.quality import FrameQuality, QualityTracker


@dataclass
class OutputFrame:
    """One output frame on its way to the sinks."""

    choice: Choice
    source: Image | None = None  # the source frame at the video's size, when a stage needs it
    photo: Image | None = None  # the chosen pool image at the output size, as it is
    image: Image | None = None  # what is written: the photo after colour transfer, or a tile mosaic
    cut: bool = False  # a scene starts at this frame
    metrics: dict[str, Any] = field(default_factory=dict)


class ChoiceFrames(Source[OutputFrame]):
    """Every choice in order as the feed hands it on, with its source frame when ``reader`` is given
    (decoded in this stage's thread). A feed still being matched is waited on; the wait is the
    source's waiting time, not its busy time."""

    name = "decode"

    def __init__(self, feed: ChoiceFeed, reader: FrameReader | None, size: tuple[int, int] | None = None) -> None:
        self.feed = feed
        self.reader = reader
        self.size = size  # (w, h) the source frames are decoded at; None: the video's own

    def items(self) -> Iterator[OutputFrame]:
        frames = self.reader.iter(self.size) if self.reader is not None else None
        position = 0
        while True:
            choice = self.feed.ready(position)
            if choice is None:
                started = time.perf_counter()
                choice = self.feed.get(position)
                self.waited += time.perf_counter() - started
                if choice is None:
                    return
            position += 1
            source = None
            if frames is not None:
                frame = next(frames, None)
                if frame is None:
                    frames = None  # the video decodes shorter this time: no more source frames
                else:
                    source = frame.image
            yield OutputFrame(choice, source=source, cut=choice.cut)

    def cancel(self) -> None:
        self.feed.cancel()


def source_size(width: int, height: int, needed_width: int = SOURCE_WIDTH) -> tuple[int, int] | None:
    """The size the output phase decodes source frames at: the least of the video's width and
    SOURCE_WIDTH or ``needed_width`` (tile colour transfer describes the source at its grid's
    describe size), whichever is wider; None for the video's own size."""
    wide = max(SOURCE_WIDTH, needed_width)
    if width <= wide:
        return None
    return wide, max(2, round(height * wide / width))


class FullFrame(Stage[OutputFrame, OutputFrame]):
    """Full-frame composer: the chosen image at the output size (decoded once per distinct image, read ahead)."""

    name = "compose"
    threaded = True

    def __init__(self, images: MatchedImages, feed: ChoiceFeed) -> None:
        self.images = images
        self._stream = images.iter_images(_FeedIds(feed))

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        item.photo = next(self._stream)
        item.image = item.photo
        return (item,)

    def close(self) -> None:
        self.images.close()


class _FeedIds:
    """The image ids of a feed's choices, for MatchedImages' read-ahead (which looks only at committed ones)."""

    def __init__(self, feed: ChoiceFeed) -> None:
        self.feed = feed

    def get(self, position: int) -> int | None:
        choice = self.feed.get(position)
        return None if choice is None else choice.image_id

    def ready(self, position: int) -> int | None:
        choice = self.feed.ready(position)
        return None if choice is None else choice.image_id


class Colour(Stage[OutputFrame, OutputFrame]):
    """Colour transfer toward the source frame (color_transfer.ColorTransfer; smoothing restarts at cuts)."""

    name = "colour"

    def __init__(self, transfer: ColorTransfer) -> None:
        self.transfer = transfer

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        assert item.photo is not None
        if item.source is not None:
            item.image = self.transfer.apply(item.photo, item.source, cut=item.cut or item.choice.index == 0)
        return (item,)


class Quality(Stage[OutputFrame, OutputFrame]):
    """The look of every output frame against its source (shared/quality.py); kept for results.json."""

    name = "quality"
    threaded = True

    def __init__(self, with_photo: bool) -> None:
        self.tracker = QualityTracker()
        self.with_photo = with_photo  # colour transfer on: also measure how much of the photo is left
        self.records: list[FrameQuality] = []

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        if item.source is not None and item.image is not None:
            photo = item.photo if self.with_photo else None
            record = self.tracker.add(item.source, item.image, photo, item.choice.image_id, item.choice.score)
            self.records.append(record)
            item.metrics = {"ssim": record.ssim, "delta_e": record.delta_e, "switched": record.switched}
        return (item,)
