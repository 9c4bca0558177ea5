"""The four classic methods: canny, spatial_pyramid, hog, spatial_color.

Each returns three blocks — edge, Sobel texture, HSV colour — so the user's
weights apply at query time. Every image of a batch has the same prepared size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from shared.errors import BundleError
from shared.features.base import (
    Block,
    Extractor,
    Image,
    MethodInfo,
    Vectors,
    always_ready,
    finish_blocks,
    no_assets,
)
from shared.features.color import hsv_histograms
from shared.features.gradients import (
    Gradients,
    canny_edges,
    cell_histogram,
    cell_index,
    gradients,
    gray_of,
    half_resolution,
)
from shared.features.texture import cell_energy, texture_histogram, two_scale_texture
from shared.spec import FeatureSpec

ORIENTATIONS = 8
COLOR_BINS = (6, 6, 6)
TEXTURE_BINS = 16
HOG_BINS = 9


def _check_batch(images: Sequence[Image], size: tuple[int, int]) -> None:
    for img in images:
        if img.shape != (size[1], size[0], 3) or img.dtype != np.uint8:
            raise ValueError(f"extractor expects {size[0]}x{size[1]} BGR uint8 images, got {img.shape} {img.dtype}")


class _Grids:
    """Cell maps for one prepared size (full and half resolution), built once per extractor."""

    def __init__(self, size: tuple[int, int]) -> None:
        self.w, self.h = size
        self._maps: dict[tuple[bool, int, int], NDArray[np.intp]] = {}
        self._pixels: dict[tuple[bool, int, int], NDArray[np.float32]] = {}

    def cells(self, rows: int, cols: int, half: bool = False) -> NDArray[np.intp]:
        key = (half, rows, cols)
        if key not in self._maps:
            h, w = ((self.h + 1) // 2, (self.w + 1) // 2) if half else (self.h, self.w)
            self._maps[key] = cell_index(h, w, rows, cols)
            self._pixels[key] = np.bincount(self._maps[key].ravel(), minlength=rows * cols).astype(np.float32)
        return self._maps[key]

    def pixels(self, rows: int, cols: int, half: bool = False) -> NDArray[np.float32]:
        self.cells(rows, cols, half)
        return self._pixels[(half, rows, cols)]


def edge_orientation_histogram(
    grads: Gradients, edges: NDArray[np.intp], cells: NDArray[np.intp], n_cells: int, pixels: NDArray[np.float32]
) -> NDArray[np.float32]:
    """[n_cells * ORIENTATIONS]: orientation of Canny edge pixels per cell, over the cell's pixel count.

    Dividing by pixels (not edge count) keeps how much edge a cell has, so an empty
    sky cell and a busy cell differ.
    """
    # Binning the edge pixels alone (about a tenth of the image) counts exactly what weighting
    # every pixel by its 0/1 edge flag did, at 60% of the cost (measured on the bench pool).
    index = cells.ravel()[edges] * ORIENTATIONS + grads.orientation_bins(ORIENTATIONS, at=edges)
    counts = np.bincount(index, minlength=n_cells * ORIENTATIONS).astype(np.float32)
    return np.asarray(np.sqrt(counts.reshape(n_cells, ORIENTATIONS) / pixels[:, None]), dtype=np.float32).ravel()


def _stack(rows: list[NDArray[np.float32]]) -> NDArray[np.float32]:
    return np.stack(rows).astype(np.float32, copy=False)


def _no_vectors(blocks: tuple[Block, ...]) -> Vectors:
    # An empty batch (the tail of a video, a chunk of rejects) is a valid call with a [0, dim] answer.
    return np.zeros((0, sum(b.dim for b in blocks)), dtype=np.float32)


class CannyExtractor:
    """Edge 128 (Canny orientation x 4x4 grid) + texture 32 (two scales) + colour 216 (HSV 6x6x6) = 376."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.blocks = (Block("edge", 16 * ORIENTATIONS), Block("texture", 2 * TEXTURE_BINS), Block("color", 216))
        self._grids = _Grids(spec.prepared_size())

    def extract(self, images: Sequence[Image]) -> Vectors:
        _check_batch(images, self.spec.prepared_size())
        if not images:
            return _no_vectors(self.blocks)
        g = self._grids
        edge, texture = [], []
        for img in images:
            grads = gradients(gray_of(img))
            edges = canny_edges(grads)
            edge.append(edge_orientation_histogram(grads, edges, g.cells(4, 4), 16, g.pixels(4, 4)))
            texture.append(two_scale_texture(grads, TEXTURE_BINS))
        color = hsv_histograms([half_resolution(img) for img in images], g.cells(1, 1, half=True), 1, COLOR_BINS)
        return finish_blocks([_stack(edge), _stack(texture), color])


class SpatialPyramidExtractor:
    """Per cell of a g x g grid: edge 32 (2x2 sub-cells x 8 orientations), texture 24, colour 216.

    272 per cell: 1088 at 2x2, 2448 at 3x3.
    """

    TEXTURE_BINS = 24

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        g = spec.spatial_grid
        self.blocks = (
            Block("edge", g * g * 4 * ORIENTATIONS),
            Block("texture", g * g * self.TEXTURE_BINS),
            Block("color", g * g * 216),
        )
        self._grids = _Grids(spec.prepared_size())

    def extract(self, images: Sequence[Image]) -> Vectors:
        _check_batch(images, self.spec.prepared_size())
        if not images:
            return _no_vectors(self.blocks)
        n, grids = self.spec.spatial_grid, self._grids
        edge, texture = [], []
        for img in images:
            grads = gradients(gray_of(img))
            edges = canny_edges(grads)
            edge.append(
                edge_orientation_histogram(
                    grads, edges, grids.cells(2 * n, 2 * n), 4 * n * n, grids.pixels(2 * n, 2 * n)
                )
            )
            texture.append(texture_histogram(grads, grids.cells(n, n), n * n, self.TEXTURE_BINS))
        halves = [half_resolution(img) for img in images]
        color = hsv_histograms(halves, grids.cells(n, n, half=True), n * n, COLOR_BINS)
        return finish_blocks([_stack(edge), _stack(texture), color])


def hog_geometry(size: tuple[int, int]) -> tuple[int, int, int]:
    """(rows, cols, descriptor length) of the HOG cell grid for a prepared image of ``size``.

    Cells are about 1/8 of the long side, so the grid follows the aspect (8x4 at 16:9,
    4x8 at 9:16) and every image of a spec has the same descriptor length.
    """
    w, h = size
    cell = max(8, max(w, h) // 8)
    cols, rows = max(2, round(w / cell)), max(2, round(h / cell))
    return rows, cols, (rows - 1) * (cols - 1) * 4 * HOG_BINS


def hog_descriptor(grads: Gradients, cells: NDArray[np.intp], rows: int, cols: int) -> NDArray[np.float32]:
    """Dalal-Triggs HOG: magnitude-weighted orientation per cell, 2x2-cell blocks, L2-Hys."""
    hist = cell_histogram(
        grads.orientation_bins(HOG_BINS), cells, rows * cols, HOG_BINS, weights=grads.magnitude, normalize=False
    ).reshape(rows, cols, HOG_BINS)
    blocks = np.concatenate([hist[:-1, :-1], hist[:-1, 1:], hist[1:, :-1], hist[1:, 1:]], axis=2).reshape(
        -1, 4 * HOG_BINS
    )
    blocks /= np.linalg.norm(blocks, axis=1, keepdims=True) + 1e-6
    np.minimum(blocks, 0.2, out=blocks)
    blocks /= np.linalg.norm(blocks, axis=1, keepdims=True) + 1e-6
    return blocks.ravel().astype(np.float32)


class HogExtractor:
    """Edge = HOG over the whole frame (any aspect), texture 32, colour 2x2 x 216."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.rows, self.cols, hog_dim = hog_geometry(spec.prepared_size())
        self.blocks = (Block("edge", hog_dim), Block("texture", 2 * TEXTURE_BINS), Block("color", 4 * 216))
        self._grids = _Grids(spec.prepared_size())

    def extract(self, images: Sequence[Image]) -> Vectors:
        _check_batch(images, self.spec.prepared_size())
        if not images:
            return _no_vectors(self.blocks)
        g = self._grids
        edge, texture = [], []
        for img in images:
            grads = gradients(gray_of(img))
            edge.append(hog_descriptor(grads, g.cells(self.rows, self.cols), self.rows, self.cols))
            texture.append(two_scale_texture(grads, TEXTURE_BINS))
        color = hsv_histograms([half_resolution(img) for img in images], g.cells(2, 2, half=True), 4, COLOR_BINS)
        return finish_blocks([_stack(edge), _stack(texture), color])


SPATIAL_COLOR_BINS = (8, 8, 8)
SPATIAL_COLOR_RAW = 16 * 512
SPATIAL_COLOR_DIM = 224


# The projection is computed exactly, so that a picture's vector never depends on the batch it
# came in (BLAS sums a 1-row product and a 64-row one in different orders: 1-ulp differences
# between a pool image and the same picture as a video frame). Entries of the projection are
# multiples of 2^-20 below 0.5 in magnitude, histogram values multiples of 2^-12 in [0, 1]: every
# product is an integer multiple of 2^-32 and every partial sum of 8192 of them stays below 2^12,
# within float64's 53 bits, so any summation order gives the same, exact float64 result.
_PROJECTION_GRID = 2.0**20
_HISTOGRAM_GRID = 2.0**12


def make_projection(seed: int) -> NDArray[np.float32]:
    """Seeded Gaussian random projection 8192 -> 224 (Johnson-Lindenstrauss keeps cosines), on an exact grid."""
    rng = np.random.Generator(np.random.PCG64(seed))
    proj = rng.standard_normal((SPATIAL_COLOR_RAW, SPATIAL_COLOR_DIM), dtype=np.float32)
    scaled = np.clip(proj.astype(np.float64) / np.sqrt(SPATIAL_COLOR_DIM), -0.49, 0.49)
    return np.asarray(np.round(scaled * _PROJECTION_GRID) / _PROJECTION_GRID, dtype=np.float32)


def project_exactly(histograms: NDArray[np.float32], projection: NDArray[np.float64]) -> NDArray[np.float32]:
    """``histograms @ projection`` with every row's result independent of the other rows."""
    grid = np.round(histograms.astype(np.float64) * _HISTOGRAM_GRID) / _HISTOGRAM_GRID
    return np.asarray(grid @ projection, dtype=np.float32)


def _centered(x: NDArray[np.float32]) -> NDArray[np.float32]:
    # Layout maps are all positive; removing the mean keeps where the detail is, not how much.
    return np.asarray(x - x.mean(), dtype=np.float32)


class SpatialColorExtractor:
    """Colour 224 (4x4 grid x 512 HSV bins = 8192, randomly projected) + edge 16 + texture 16 = 256."""

    def __init__(self, spec: FeatureSpec, projection: NDArray[np.float32]) -> None:
        if projection.shape != (SPATIAL_COLOR_RAW, SPATIAL_COLOR_DIM) or projection.dtype != np.float32:
            raise BundleError(
                f"projection.npy has shape {projection.shape} {projection.dtype}, "
                f"expected ({SPATIAL_COLOR_RAW}, {SPATIAL_COLOR_DIM}) float32"
            )
        self.spec = spec
        self.projection = projection
        # On the exact grid whatever file it came from (a grid projection.npy is unchanged by this).
        self._projection64 = np.clip(np.round(projection.astype(np.float64) * _PROJECTION_GRID), -(2**19), 2**19)
        self._projection64 /= _PROJECTION_GRID
        self.blocks = (Block("edge", 16), Block("texture", 16), Block("color", SPATIAL_COLOR_DIM))
        self._grids = _Grids(spec.prepared_size())

    def extract(self, images: Sequence[Image]) -> Vectors:
        _check_batch(images, self.spec.prepared_size())
        if not images:
            return _no_vectors(self.blocks)
        g = self._grids
        cells, pixels = g.cells(4, 4), g.pixels(4, 4)
        edge, texture = [], []
        for img in images:
            grads = gradients(gray_of(img))
            edges = canny_edges(grads)
            # Counting the edge pixels per cell gives what summing 0/1 weights did, at a fifth of the cost.
            edge_counts = np.bincount(cells.ravel()[edges], minlength=16).astype(np.float32)
            edge.append(_centered(edge_counts / pixels))
            texture.append(_centered(cell_energy(grads, cells, 16, pixels)))
        halves = [half_resolution(img) for img in images]
        projected = project_exactly(
            hsv_histograms(halves, g.cells(4, 4, half=True), 16, SPATIAL_COLOR_BINS), self._projection64
        )
        return finish_blocks([_stack(edge), _stack(texture), projected])


PROJECTION_FILE = "projection.npy"


def _spatial_color_assets(spec: FeatureSpec, dest: Path, model_file: Path | None = None) -> list[str]:
    from shared.atomic import atomic_save_npy

    atomic_save_npy(dest / PROJECTION_FILE, make_projection(spec.projection_seed))
    return [PROJECTION_FILE]


def _spatial_color_factory(spec: FeatureSpec, asset_dir: Path) -> SpatialColorExtractor:
    path = asset_dir / PROJECTION_FILE
    if not path.is_file():
        raise BundleError(f"{path}: missing (spatial_color needs its projection)")
    projection = np.load(path, allow_pickle=False)
    return SpatialColorExtractor(spec, projection)


def _plain(name: str, summary: str, make: Callable[[FeatureSpec], Extractor]) -> MethodInfo:
    """A classic method that needs no assets: the extractor is made from the spec alone."""
    return MethodInfo(
        name=name,
        summary=summary,
        neural=False,
        factory=lambda spec, _dir: make(spec),
        prepare_assets=no_assets,
        readiness=always_ready,
        dim=lambda spec: sum(b.dim for b in make(spec).blocks),
    )


# The classic methods, listed by shared.features.registry (nothing registers itself at import).
METHODS: tuple[MethodInfo, ...] = (
    _plain("canny", "Canny edge orientation (4x4 grid) + Sobel texture + HSV colour; fastest", CannyExtractor),
    _plain(
        "spatial_pyramid",
        "per-cell edges, texture and colour on a 2x2 or 3x3 grid (--spatial-grid); keeps layout",
        SpatialPyramidExtractor,
    ),
    _plain("hog", "histogram of oriented gradients (any aspect) + texture + 2x2 colour; best for motion", HogExtractor),
    MethodInfo(
        name="spatial_color",
        summary="4x4 grid x 512 HSV bins projected to 224 + edge and detail layout; compact, colour-true",
        neural=False,
        factory=_spatial_color_factory,
        prepare_assets=_spatial_color_assets,
        readiness=always_ready,
        dim=lambda spec: 16 + 16 + SPATIAL_COLOR_DIM,
    ),
)
