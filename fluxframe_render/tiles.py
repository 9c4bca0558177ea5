"""Tile mode's grid: parse COLSxROWS, cut a frame into cells, describe the cells.

Cells cover the frame exactly: a W-pixel row cut into C cells gets cells of W // C and
W // C + 1 pixels, the wider ones spread evenly (edges at round-down multiples of W / C),
so no pixel is left over at the right or bottom border.

Cells are described by shared.tiles.describe_tiles after being resized to the atlas tile
size, exactly as the pool images' tiles were: one descriptor function for both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.errors import UsageError
from shared.tiles import Descriptors, TileSpec, describe_mosaic, describe_tiles

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

    def uniform_for(self, tile_size: int) -> bool:
        """Cells all of one size, at least ``tile_size`` each way: one area resize of the whole frame
        gives every cell at the tile size exactly as resizing it alone would (see _uniform_cells)."""
        uniform = self.width % self.cols == 0 and self.height % self.rows == 0
        return uniform and self.width // self.cols >= tile_size and self.height // self.rows >= tile_size

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of one cell."""
        return int(self.xs[col]), int(self.ys[row]), int(self.xs[col + 1]), int(self.ys[row + 1])

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Every cell's box, row-major (the order of cell descriptors and grid entries)."""
        return [self.box(r, c) for r in range(self.rows) for c in range(self.cols)]


def frame_cells(frame: NDArray[np.uint8], geometry: CellGeometry, tile_size: int) -> NDArray[np.uint8]:
    """uint8 [cells, s, s, 3]: each cell of the frame resized to the atlas tile size, row-major."""
    if frame.shape[:2] != (geometry.height, geometry.width):
        raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, geometry is {geometry.width}x{geometry.height}")
    if geometry.uniform_for(tile_size):
        return _uniform_cells(frame, geometry, tile_size)
    out = np.empty((geometry.cells, tile_size, tile_size, 3), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(geometry.boxes()):
        cell = frame[y0:y1, x0:x1]
        shrinking = cell.shape[0] >= tile_size and cell.shape[1] >= tile_size
        # Area averaging when shrinking (no aliasing), bilinear when enlarging: as prepare_image does.
        out[i] = cv2.resize(
            cell, (tile_size, tile_size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    return out


def _uniform_cells(frame: NDArray[np.uint8], geometry: CellGeometry, tile_size: int) -> NDArray[np.uint8]:
    """frame_cells for cells of one size at least the tile's, by one resize of the whole frame.

    (576 separate resizes took 15 ms a 1280x720 frame.) Every cell edge falls on an output
    pixel edge and an area resize averages only the source pixels under each output pixel,
    so each cell of the result is exactly that cell shrunk on its own (tested). Enlarging
    is bilinear, which would blend neighbouring cells: those go through the per-cell path.
    """
    cols, rows = geometry.cols, geometry.rows
    whole = cv2.resize(frame, (cols * tile_size, rows * tile_size), interpolation=cv2.INTER_AREA)
    cells = whole.reshape(rows, tile_size, cols, tile_size, 3).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(cells.reshape(geometry.cells, tile_size, tile_size, 3), dtype=np.uint8)


def describe_frame(frame: NDArray[np.uint8], geometry: CellGeometry, tiles: TileSpec) -> Descriptors:
    """float32 [cells, d]: the colour-layout descriptor of every cell, row-major.

    A frame already at ``mosaic_size`` (decoded at that size: TileFrames) is described as it is.
    """
    if geometry.uniform_for(tiles.size):
        mosaic = tuple(mosaic_size(geometry, tiles.size))
        if (frame.shape[1], frame.shape[0]) != mosaic:
            if frame.shape[:2] != (geometry.height, geometry.width):
                raise ValueError(
                    f"frame is {frame.shape[1]}x{frame.shape[0]}, geometry is {geometry.width}x{geometry.height}"
                )
            frame = np.asarray(cv2.resize(frame, mosaic, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        return describe_mosaic(frame, geometry.cols, geometry.rows, tiles.grid)
    return describe_tiles(frame_cells(frame, geometry, tiles.size), tiles.grid)


def mosaic_size(geometry: CellGeometry, tile_size: int) -> tuple[int, int]:
    """(width, height) of the frame cut into cells of exactly the tile size."""
    return geometry.cols * tile_size, geometry.rows * tile_size
