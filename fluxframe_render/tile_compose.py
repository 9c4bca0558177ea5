"""Tile mode's composer: a frame of the video's size gathered from the memory-mapped atlas.

No image file is opened: each chosen atlas tile (uint8, mmapped) is resized to its
cell's size once and kept in a byte-bounded LRU cache, and a frame is those tiles
copied into place. Cells of one grid have at most four sizes (w or w + 1 by h or h + 1),
so a tile is resized at most that many times while it stays cached.

Optional colour transfer moves each tile's CIELAB mean toward its cell's by ``strength``
(0: the photo as it is, 1: the cell's mean colour): one LAB round trip of the frame.
The means come from the descriptors the matcher already has, not from new pixels.
"""

from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np
from numpy.typing import NDArray

from fluxframe_render.tiles import CellGeometry
from shared.tiles import DESCRIPTOR_GRID, descriptor_mean_lab

DEFAULT_CACHE_BYTES = 128 << 20


def lab_shift(
    cell_descriptors: NDArray[np.float32],
    tile_descriptors: NDArray[np.float32],
    strength: float,
    grid: int = DESCRIPTOR_GRID,
) -> NDArray[np.float32]:
    """float32 [cells, 3]: the LAB offset that moves each tile's mean ``strength`` of the way to its cell's."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour strength must be within 0..1, got {strength}")
    shift = descriptor_mean_lab(cell_descriptors, grid) - descriptor_mean_lab(tile_descriptors, grid)
    scaled: NDArray[np.float32] = (shift * np.float32(strength)).astype(np.float32)
    return scaled


class TileComposer:
    """Frames of ``geometry``'s size from grids of atlas ids."""

    def __init__(
        self, atlas: NDArray[np.uint8], geometry: CellGeometry, *, cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        if atlas.ndim != 4 or atlas.shape[3] != 3 or atlas.dtype != np.uint8:
            raise ValueError(f"expected a uint8 atlas [n, s, s, 3], got {atlas.shape} {atlas.dtype}")
        self.atlas = atlas
        self.geometry = geometry
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int, int], NDArray[np.uint8]] = OrderedDict()
        self._cached_bytes = 0
        self.resizes = 0  # tiles resized so far (cache misses), for benchmarks and tests

    def tile(self, image: int, width: int, height: int) -> NDArray[np.uint8]:
        """Atlas tile ``image`` at width x height, from the cache when it is there."""
        key = (image, width, height)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        source = np.asarray(self.atlas[image])
        side = source.shape[0]
        shrinking = width <= side and height <= side
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        resized = np.ascontiguousarray(cv2.resize(source, (width, height), interpolation=interpolation), np.uint8)
        self.resizes += 1
        self._cache[key] = resized
        self._cached_bytes += resized.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= dropped.nbytes
        return resized

    def compose(self, grid: NDArray[np.int32], shift: NDArray[np.float32] | None = None) -> NDArray[np.uint8]:
        """uint8 BGR [height, width, 3]: the grid's tiles in place, shifted in LAB by ``shift`` [cells, 3] if given."""
        g = self.geometry
        if grid.shape != (g.rows, g.cols):
            raise ValueError(f"grid of shape {grid.shape}, expected {(g.rows, g.cols)}")
        if g.width % g.cols == 0 and g.height % g.rows == 0:
            out = self._uniform(grid)
        else:
            out = np.empty((g.height, g.width, 3), dtype=np.uint8)
            ids = grid.reshape(-1).tolist()
            for image, (x0, y0, x1, y1) in zip(ids, g.boxes(), strict=True):
                out[y0:y1, x0:x1] = self.tile(image, x1 - x0, y1 - y0)
        if shift is not None:
            out = self._shifted(out, shift)
        return out

    def _uniform(self, grid: NDArray[np.int32]) -> NDArray[np.uint8]:
        """compose's copy when every cell has one size: the frame viewed as [rows, h, cols, w * 3], each
        tile copied as h rows of w * 3 bytes (2.1 instead of 6.0 ms of CPU a 32x18 720p frame: the
        three-axis slice assignment was the cost; np.unique + take was no faster, measured)."""
        g = self.geometry
        w, h = g.width // g.cols, g.height // g.rows
        out = np.empty((g.rows, h, g.cols, w * 3), dtype=np.uint8)
        for r, ids in enumerate(grid.tolist()):
            row = out[r]
            for c, image in enumerate(ids):
                row[:, c] = self.tile(image, w, h).reshape(h, w * 3)
        frame: NDArray[np.uint8] = out.reshape(g.height, g.width, 3)
        return frame

    def _shifted(self, frame: NDArray[np.uint8], shift: NDArray[np.float32]) -> NDArray[np.uint8]:
        g = self.geometry
        per_cell = shift.reshape(g.rows, g.cols, 3)
        # Each cell's offset spread over its pixels (cells differ in size by at most one pixel).
        offsets = np.repeat(np.repeat(per_cell, np.diff(g.ys), axis=0), np.diff(g.xs), axis=1)
        lab = np.asarray(cv2.cvtColor(frame.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_BGR2Lab), np.float32)
        bgr = cv2.cvtColor(lab + offsets, cv2.COLOR_Lab2BGR)
        shifted: NDArray[np.uint8] = np.clip(bgr * 255 + 0.5, 0, 255).astype(np.uint8)
        return shifted
