"""Tile mode as pipeline stages: a tile source and selector for the match phase, a tile composer for output.

Match phase: ``TileFrames`` decodes frames and describes every cell (tiles.describe_frame,
the same descriptor ff-index stored for every pool image) -> ``TileSelect`` chooses a grid
of images per frame (tile_match.TileMatcher, all cells of a batch in one search) and hands
on one ``Choice`` per frame, its grid kept aside for the checkpoint stage, which appends it
to OUT/tiles.log before the choices (tile_record.TileGridLog).

Output phase: ``TileCompose`` gathers each frame from the memory-mapped atlas.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.choice_feed import FeedGrids
from fluxframe_render.output import OutputFrame
from fluxframe_render.pipeline import Source, Stage
from fluxframe_render.select import Choice, FrameRef
from fluxframe_render.tile_compose import TileComposer, lab_shift
from fluxframe_render.tile_match import TileMatcher
from fluxframe_render.tiles import CellGeometry, describe_frame, describe_size
from fluxframe_render.video import FrameReader
from shared.tiles import TileSpec

# A tile frame's score: 1 - mean RMS ΔE of its cells / this (0 for a mosaic as far off as random pictures).
SCORE_SCALE_DELTA_E = 100.0


@dataclass
class TileBatch:
    frames: list[FrameRef]
    cells: list[NDArray[np.float32]]  # per frame, [cells, d] descriptors


class TileFrames(Source[TileBatch]):
    """Frames described cell by cell, in batches (the whole batch is one search)."""

    name = "decode"

    def __init__(self, reader: FrameReader, geometry: CellGeometry, spec: TileSpec, batch: int) -> None:
        self.reader = reader
        self.geometry = geometry
        self.spec = spec
        self.batch = batch

    def items(self) -> Iterator[TileBatch]:
        frames: list[FrameRef] = []
        cells: list[NDArray[np.float32]] = []
        # The decoder's scaler brings the frame straight to the size cells are described at (one
        # swscale pass, 0.3 ms at 256x144 against 1.5 ms at 1024x576 and 1.9 at 720p, one core). Its
        # area filter is not OpenCV's: cells differ by 0.70-0.75 ΔE RMS on average (p99 1.3-1.6)
        # from the 720p frame scaled by OpenCV. Deblocked, unlike the full-frame match phase's:
        # skipping the loop filter raised that p99 to 2.5-3.9 (measured), and tiles follow colours.
        info = self.reader.info
        size = describe_size(self.geometry, self.spec)
        smaller = size[0] <= info.width and size[1] <= info.height
        for frame in self.reader.iter(size if smaller else None):
            frames.append(FrameRef(frame.index, frame.source_index, frame.time))
            cells.append(describe_frame(frame.image, self.geometry, self.spec))
            if len(frames) == self.batch:
                yield TileBatch(frames, cells)
                frames, cells = [], []
        if frames:
            yield TileBatch(frames, cells)


class TileSelect(Stage[TileBatch, Choice]):
    """A grid of pool images per frame; ``grids`` holds each chosen frame's grid until it is committed."""

    name = "tiles"
    threaded = True  # describing the next batch overlaps this one's search

    def __init__(self, matcher: TileMatcher) -> None:
        self.matcher = matcher
        self.grids: dict[int, NDArray[np.int32]] = {}

    def process(self, item: TileBatch) -> Iterable[Choice]:
        made = []
        for frame, tile_frame in zip(item.frames, self.matcher.match(item.cells), strict=True):
            ids, counts = np.unique(tile_frame.grid, return_counts=True)
            score = max(0.0, 1.0 - float(tile_frame.distance.mean()) / SCORE_SCALE_DELTA_E)
            # The frame's image id: its most used tile (what summaries of a tile render count).
            image_id = int(ids[int(np.argmax(counts))])
            self.grids[frame.index] = tile_frame.grid
            made.append(Choice(frame.index, frame.source_index, frame.time, image_id, score, False, None))
        return made

    def take_grids(self, choices: Sequence[Choice]) -> NDArray[np.int32]:
        """The grids of ``choices`` (about to be committed), in order, forgotten here."""
        return np.stack([self.grids.pop(c.index) for c in choices])


class TileCompose(Stage[OutputFrame, OutputFrame]):
    """Tile composer: each output frame gathered from the atlas; optional colour shift toward each cell."""

    name = "compose"
    threaded = True

    def __init__(
        self,
        composer: TileComposer,
        grids: FeedGrids,
        spec: TileSpec,
        descriptors: NDArray[np.float32],
        strength: float,
    ) -> None:
        self.composer = composer
        self.grids = grids
        self.spec = spec
        self.descriptors = descriptors
        self.strength = strength

    def process(self, item: OutputFrame) -> Iterable[OutputFrame]:
        grid = np.asarray(self.grids[item.choice.index])
        shift = None
        if self.strength > 0 and item.source is not None:
            cells = describe_frame(item.source, self.composer.geometry, self.spec)
            shift = lab_shift(cells, np.asarray(self.descriptors[grid.ravel()]), self.strength, self.spec.grid)
        item.photo = self.composer.compose(grid, shift)
        item.image = item.photo
        return (item,)
