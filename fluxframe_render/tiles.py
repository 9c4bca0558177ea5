"""Tile mode's grid: parse COLSxROWS, cut a frame into cells, describe the cells.

Cells cover the frame exactly: a W-pixel row cut into C cells gets cells of W // C and
W // C + 1 pixels, the wider ones spread evenly (edges at round-down multiples of W / C),
so no pixel is left over at the right or bottom border.

A pool tile's descriptor (shared.tiles) is the mean CIELAB of each of its grid x grid blocks.
A frame is described the same way from the frame area-scaled to BLOCK_PIXELS pixels a block
side (256x144 for 32x18 tiles): the CIELAB of 2x2-pixel area means, averaged per block. Against
CIELAB taken per pixel of the cells scaled to the 32 px atlas size, that differs by 0.15-0.18
ΔE RMS a cell (p99 0.32-0.36) on the bench clip and Big Buck Bunny, and costs 0.4-0.5 instead
of 6-7 ms a 1280x720 frame (measured).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.errors import UsageError
from shared.tiles import Descriptors, TileSpec, describe_mosaic

MAX_GRID_SIDE = 1000
_GRID = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_grid(text: str) -> tuple[int, int]:
    """'32x18' -> (32, 18) = (cols, rows); a UsageError that says what was expected otherwise."""
    match = _GRID.match(text)
    if match is None:
        raise UsageError(f"--tiles expects COLSxROWS such as 32x18, got {text!r}")
    cols, rows = int(match.group(1)), int(match.group(2))
    if not (1 <= cols <= MAX_GRID_SIDE and 1 <= rows <= MAX_GRID_SIDE):
        raise UsageError(f"--tiles {text!r}: columns and rows must be within 1..{MAX_GRID_SIDE}")
    return cols, rows


def cell_edges(length: int, count: int) -> NDArray[np.int64]:
    """count + 1 pixel edges that cut ``length`` into ``count`` cells differing by at most one pixel."""
    return (np.arange(count + 1, dtype=np.int64) * length) // count


@dataclass(frozen=True)
class CellGeometry:
    """Where each cell of a cols x rows grid sits in a width x height frame."""

    width: int
    height: int
    cols: int
    rows: int

    def __post_init__(self) -> None:
        if self.cols > self.width or self.rows > self.height:
            raise UsageError(
                f"--tiles {self.cols}x{self.rows} has more cells than the {self.width}x{self.height} frame has pixels"
            )

    @classmethod
    def for_frame(cls, width: int, height: int, grid: tuple[int, int]) -> CellGeometry:
        return cls(width, height, grid[0], grid[1])

    @property
    def cells(self) -> int:
        return self.cols * self.rows

    @cached_property
    def xs(self) -> NDArray[np.int64]:
        return cell_edges(self.width, self.cols)

    @cached_property
    def ys(self) -> NDArray[np.int64]:
        return cell_edges(self.height, self.rows)

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of one cell."""
        return int(self.xs[col]), int(self.ys[row]), int(self.xs[col + 1]), int(self.ys[row + 1])

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Every cell's box, row-major (the order of cell descriptors and grid entries)."""
        return [self.box(r, c) for r in range(self.rows) for c in range(self.cols)]


# Pixels a side per descriptor block at which frames are described: two, so that CIELAB is
# taken of 2x2 area means (one pixel a block took CIELAB of the block's mean: 1.7-2.6 ΔE RMS
# off, p99 9, measured; more pixels cost more and gained nothing measurable).
BLOCK_PIXELS = 2


def describe_size(geometry: CellGeometry, tiles: TileSpec) -> tuple[int, int]:
    """(width, height) a frame is described at: BLOCK_PIXELS a side per descriptor block of every cell."""
    side = tiles.grid * BLOCK_PIXELS
    return geometry.cols * side, geometry.rows * side


def describe_frame(frame: NDArray[np.uint8], geometry: CellGeometry, tiles: TileSpec) -> Descriptors:
    """float32 [cells, d]: the colour-layout descriptor of every cell, row-major.

    ``frame`` is the video frame at any size of the geometry's shape (decoded smaller, or at
    ``describe_size`` already: TileFrames); it is area-scaled to ``describe_size`` whole, so
    every cell is the average of the frame's pixels under it.
    """
    height, width = frame.shape[:2]
    size = describe_size(geometry, tiles)
    if (width, height) != size:
        # A frame decoded smaller keeps the video's shape up to rounding a side by a pixel.
        aspect = geometry.width / geometry.height
        if abs(width / height - aspect) > aspect * 2 / height:
            raise ValueError(f"a {width}x{height} frame is not the shape of a {geometry.width}x{geometry.height} video")
        frame = np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)
    return describe_mosaic(frame, geometry.cols, geometry.rows, tiles.grid)
