"""Tile-mosaic data: an image's atlas tile and the colour-layout descriptor tiles are matched by.

One code path for both sides: ff-index describes every pool image's atlas tile with
``describe_tiles`` and ff-render describes every frame cell (resized to the same tile
size) with the same function, so a cell and a tile are compared in one space.

The descriptor is the tile's CIELAB (D65, L in 0..100) averaged over a GRID x GRID
layout, float32 [GRID * GRID * 3], scaled by 1 / GRID so that the L2 distance between two
descriptors is the root-mean-square ΔE76 over the layout's cells: a margin or threshold
in this space reads as a colour difference a viewer can judge (ΔE ~2.3 is "just
noticeable").

Tile size: 32 x 32 px is 3,072 bytes an image (3.07 GB per million images) and covers a
1280x720 frame cut into 32x18 cells (40 x 40 px each) with a mild x1.25 enlargement; 24 px
(1.7 GB per million) went visibly soft at that size, 48 px (6.9 GB per million) only pays
for grids coarser than 27 columns at 1280 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.errors import BundleError
from shared.images import prepare_image

DEFAULT_TILE_SIZE = 32
DESCRIPTOR_GRID = 4
DESCRIPTOR_NAME = "lab-grid-v1"  # bump when describe_tiles changes: old descriptors stop matching
LAB_CHANNELS = 3

Tiles = NDArray[np.uint8]  # [n, s, s, 3] BGR
Descriptors = NDArray[np.float32]  # [n, GRID * GRID * 3]


@dataclass(frozen=True)
class TileSpec:
    """What a bundle's tile data is: atlas tile side in pixels and the descriptor's layout."""

    size: int = DEFAULT_TILE_SIZE
    grid: int = DESCRIPTOR_GRID
    descriptor: str = DESCRIPTOR_NAME

    def __post_init__(self) -> None:
        if not 8 <= self.size <= 256:
            raise ValueError(f"tile size must be within 8..256 px, got {self.size}")
        if self.grid < 1 or self.size % self.grid:
            raise ValueError(f"tile size {self.size} must be a multiple of the descriptor grid {self.grid}")

    @property
    def dim(self) -> int:
        return self.grid * self.grid * LAB_CHANNELS

    @property
    def atlas_bytes_per_image(self) -> int:
        return self.size * self.size * 3

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "grid": self.grid, "descriptor": self.descriptor, "dim": self.dim}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TileSpec:
        spec = cls(size=int(data["size"]), grid=int(data["grid"]), descriptor=str(data["descriptor"]))
        if int(data.get("dim", spec.dim)) != spec.dim:
            raise BundleError(f"tile descriptor dim {data.get('dim')} does not match its grid {spec.grid}")
        return spec

    def check_supported(self) -> None:
        if self.descriptor != DESCRIPTOR_NAME:
            raise BundleError(
                f"tile descriptor {self.descriptor!r} is not the one this FluxFrame computes ({DESCRIPTOR_NAME!r}); "
                "rebuild the bundle's tile data with ff-index build --update"
            )


def atlas_tile(image: NDArray[np.uint8], size: int = DEFAULT_TILE_SIZE) -> NDArray[np.uint8]:
    """The image's square centre crop resized to size x size: uint8 BGR, contiguous."""
    return prepare_image(image, (size, size))


def describe_tiles(tiles: Tiles, grid: int = DESCRIPTOR_GRID) -> Descriptors:
    """float32 [n, grid * grid * 3]: mean CIELAB per grid cell, scaled so L2 = RMS ΔE over the cells.

    ``tiles`` is uint8 BGR [n, s, s, 3] with s a multiple of ``grid`` (atlas tiles, or frame
    cells resized to the atlas size).
    """
    if tiles.ndim != 4 or tiles.shape[1] != tiles.shape[2] or tiles.shape[3] != 3 or tiles.dtype != np.uint8:
        raise ValueError(f"expected uint8 tiles [n, s, s, 3], got {tiles.shape} {tiles.dtype}")
    n, side = tiles.shape[0], tiles.shape[1]
    if side % grid:
        raise ValueError(f"tile side {side} is not a multiple of the grid {grid}")
    if n == 0:
        return np.zeros((0, grid * grid * LAB_CHANNELS), dtype=np.float32)
    # The tiles stacked as one tall image: one colour conversion and one block-average call
    # instead of n of each (numpy's mean over strided axes cost 1 ms a tile, measured).
    means = _lab_block_means(np.ascontiguousarray(tiles).reshape(n * side, side, 3), (grid, n * grid))
    return _descriptors(means.reshape(n, -1), grid)


def describe_mosaic(image: NDArray[np.uint8], cols: int, rows: int, grid: int = DESCRIPTOR_GRID) -> Descriptors:
    """``describe_tiles`` of the cols x rows tiles an image of cols x rows tiles is cut into, row-major.

    Bit for bit the same (tested) without cutting the image into tiles first: the colour
    conversion and the block means of the whole image are the same per-pixel and per-block
    arithmetic (a 32x18 frame of 32 px tiles: 8 ms instead of 23, measured).
    """
    height, width = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 BGR image, got {image.shape} {image.dtype}")
    if width % cols or height % rows or (width // cols) != (height // rows) or (width // cols) % grid:
        raise ValueError(f"a {width}x{height} image is not {cols}x{rows} square tiles of a multiple of {grid} px")
    means = _lab_block_means(image, (cols * grid, rows * grid))  # [rows * grid, cols * grid, 3]
    cells = means.reshape(rows, grid, cols, grid, LAB_CHANNELS).transpose(0, 2, 1, 3, 4)
    return _descriptors(cells.reshape(rows * cols, -1), grid)


def _lab_block_means(image: NDArray[np.uint8], blocks: tuple[int, int]) -> NDArray[np.float32]:
    """Mean float CIELAB of the image's blocks: float32 [blocks down, blocks across, 3].

    INTER_AREA at an integer factor is the exact mean of each block (no block straddles two tiles).
    """
    lab = cv2.cvtColor(image.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_BGR2Lab)
    means = np.asarray(cv2.resize(lab, blocks, interpolation=cv2.INTER_AREA), dtype=np.float32)
    return means


def _descriptors(means: NDArray[np.float32], grid: int) -> Descriptors:
    """[n, grid * grid * 3] block means scaled by 1 / grid: L2 between two is the RMS ΔE over the blocks."""
    descriptors: Descriptors = np.ascontiguousarray(means * np.float32(1 / grid), dtype=np.float32)
    return descriptors


def descriptor_mean_lab(descriptors: Descriptors, grid: int = DESCRIPTOR_GRID) -> NDArray[np.float32]:
    """float32 [n, 3]: each tile's mean CIELAB, read back from its descriptor."""
    cells = descriptors.reshape(descriptors.shape[0], grid * grid, LAB_CHANNELS).astype(np.float64) * grid
    means: NDArray[np.float32] = cells.mean(axis=1).astype(np.float32)
    return means
