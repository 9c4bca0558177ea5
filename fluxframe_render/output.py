"""The output phase's source and composer: choices (+ source frames) -> output pictures.

The output phase reads only the checkpoint's choices and, when a later stage needs them
(colour transfer, quality metrics, samples, the report), the source frames decoded again
at full size: no matching happens here, so output options re-render in seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fluxframe_render.compose import MatchedImages
from fluxframe_render.pipeline import Source, Stage
from fluxframe_render.select import Choice
from fluxframe_render.video import FrameReader
from shared.features.base import Image


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
    """Every choice in order, with its source frame when ``reader`` is given (decoded in this stage's thread)."""

    name = "decode"

    def __init__(self, choices: Sequence[Choice], reader: FrameReader | None, cuts: set[int] | None = None) -> None:
        self.choices = choices
        self.reader = reader
        self.cuts = cuts or set()

    def items(self) -> Iterator[OutputFrame]:
        frames = iter(self.reader) if self.reader is not None else None
        for choice in self.choices:
            source = None
            if frames is not None:
                frame = next(frames, None)
                if frame is None:
                    frames = None  # the video decodes shorter this time: no more source frames
                else:
                    source = frame.image
            yield OutputFrame(choice, source=source, cut=choice.index in self.cuts)


class FullFrame(Stage[OutputFrame, OutputFrame]):
    """Full-frame composer: the chosen image at the output size (decoded once per distinct image, read ahead)."""

    name = "compose"
    threaded = True

    def __init__(self, images: MatchedImages, ids: Sequence[int]) -> None:
        self.images = images
        self._stream = images.iter_images(list(ids))

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        item.photo = next(self._stream)
        item.image = item.photo
        return (item,)

    def close(self) -> None:
        self.images.close()
