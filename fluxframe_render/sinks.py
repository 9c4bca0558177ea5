"""Where output frames go: the MP4, the frame JPEGs, the comparison samples.

Each sink is the last kind of stage: it passes every frame on unchanged, so sinks can be
chained in any number, and a new output (a report, a contact sheet) is one new class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from fluxframe_render.compose import JpegWriter, side_by_side
from fluxframe_render.output import OutputFrame
from fluxframe_render.pipeline import Stage
from fluxframe_render.report import FrameRecord, ReportBuilder
from fluxframe_render.select import HELD
from fluxframe_render.video import VideoWriter


class Mp4Sink(Stage[OutputFrame, OutputFrame]):
    """H.264 + the source's audio (video.VideoWriter: written to a temporary name, renamed when complete)."""

    name = "encode"
    threaded = True  # x264 works while the frames behind are measured

    def __init__(self, writer: VideoWriter) -> None:
        self.writer = writer
        self.completed = False

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        assert item.image is not None
        self.writer.write(item.image)
        return (item,)

    def finish(self) -> Iterable[OutputFrame]:
        self.writer.close()
        self.completed = True
        return ()

    def close(self) -> None:
        if not self.completed:
            self.writer.abort()


class FramesSink(Stage[OutputFrame, OutputFrame]):
    """OUT/matched_frames/frame_NNNNNN.jpg, encoded in worker threads."""

    name = "frames"

    def __init__(self, folder: Path, jpegs: JpegWriter) -> None:
        self.folder = folder
        self.jpegs = jpegs

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        assert item.image is not None
        self.jpegs.submit(self.folder / f"frame_{item.choice.index:06d}.jpg", item.image)
        return (item,)


class SamplesSink(Stage[OutputFrame, OutputFrame]):
    """OUT/comparison_samples/sample_NNNNNN.jpg: the source frame beside its output, labelled."""

    name = "samples"

    def __init__(self, folder: Path, wanted: set[int], jpegs: JpegWriter, name_of: Callable[[int], str]) -> None:
        self.folder = folder
        self.wanted = wanted
        self.jpegs = jpegs
        self.name_of = name_of

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        choice = item.choice
        if choice.index in self.wanted and item.source is not None and item.image is not None:
            sample = side_by_side(
                item.source,
                item.image,
                f"frame {choice.index}  t={choice.time:.2f}s",
                f"{self.name_of(choice.image_id)}  score {choice.score:.3f}",
            )
            self.jpegs.submit(self.folder / f"sample_{choice.index:06d}.jpg", sample)
        return (item,)


class ReportSink(Stage[OutputFrame, OutputFrame]):
    """OUT/report.html (report.ReportBuilder): figures of every frame, thumbnails of a bounded sample."""

    name = "report"

    def __init__(self, builder: ReportBuilder, name_of: Callable[[int], str], *, tiles: bool = False) -> None:
        self.builder = builder
        self.name_of = name_of
        # Tile mode: the output is the picture; a frame's "image" is only its most used tile.
        self.tiles = tiles
        self.last: OutputFrame | None = None  # the last frame, for the report's tile zoom
        self._previous_id: int | None = None

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        choice = item.choice
        switched = self._previous_id is not None and choice.image_id != self._previous_id
        self._previous_id = choice.image_id
        record = FrameRecord(
            index=choice.index,
            time=choice.time,
            image_id=choice.image_id,
            image_name=("mosaic; most used tile " if self.tiles else "") + self.name_of(choice.image_id),
            score=choice.score,
            ssim=item.metrics.get("ssim"),
            delta_e=item.metrics.get("delta_e"),
            switched=switched,
            held=choice.fallback == HELD,
            cut=choice.cut,
        )
        if self.builder.wants_thumbnails(choice.index, switched):
            self.builder.add_frame(record, item.source, item.image, None if self.tiles else item.photo)
        else:
            self.builder.add_frame(record, None, None, None)
        self.last = item
        return (item,)
