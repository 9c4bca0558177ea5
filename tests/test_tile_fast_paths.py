"""Tile mode's fast paths: the candidate cache answers what a full search answers; frames described whole."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from fluxframe_render.tile_cache import CandidateCache
from fluxframe_render.tile_compose import TileComposer
from fluxframe_render.tile_match import TileIndex, TileMatcher, TileRules
from fluxframe_render.tile_stages import TileFrames
from fluxframe_render.tiles import CellGeometry, describe_frame, describe_size
from fluxframe_render.video import FrameReader
from shared.tiles import TileSpec, atlas_tile, describe_mosaic, describe_tiles
from tests.media import make_test_video
from tests.pools import colour_images, crop_tiles, real_images

SPEC = TileSpec()
GRID = (16, 9)


def _pool(n: int) -> NDArray[np.float32]:
    """Descriptors of ``n`` tiles cut at random places and scales from the package photos."""
    return describe_tiles(crop_tiles(n, seed=3, size=SPEC.size))


def _pan(frames: int, width: int = 320, height: int = 180) -> list[NDArray[np.float32]]:
    """Cell descriptors of a slow pan over a real photo: most cells move a little every frame."""
    image = colour_images()[2]
    geometry = CellGeometry.for_frame(width, height, GRID)
    out = []
    for i in range(frames):
        shift = np.array([[1.0, 0.0, -1.5 * i], [0.0, 1.0, -0.5 * i]])
        zoomed = cv2.resize(image, (width + 40, height + 30), interpolation=cv2.INTER_AREA)
        moved = cv2.warpAffine(zoomed, shift, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out.append(describe_frame(np.ascontiguousarray(moved, dtype=np.uint8), geometry, SPEC))
    return out


@pytest.mark.parametrize("k", [1, 5])
def test_the_cache_answers_what_a_full_search_answers_and_answers_some_cells(k: int) -> None:
    index = TileIndex(_pool(600), block_rows=256)
    cache = CandidateCache(index, width=24)
    for cells in _pan(12):
        cached_d, cached_i = cache.search(cells, k)
        full_d, full_i = index.search(cells, k)
        np.testing.assert_array_equal(cached_i, full_i)
        np.testing.assert_array_equal(cached_d, full_d)
    assert 0 < cache.hits < cache.queries


def test_the_bound_of_a_full_search_holds_for_every_row_it_did_not_return() -> None:
    descriptors = _pool(500)
    index = TileIndex(descriptors, block_rows=128)
    queries = _pan(1)[0]
    dist, ids, bound = index.search_bounded(queries, 10)
    exact = np.sqrt(((descriptors[None].astype(np.float64) - queries[:, None].astype(np.float64)) ** 2).sum(-1))
    for q in range(queries.shape[0]):
        others = np.setdiff1d(np.arange(descriptors.shape[0]), ids[q])
        assert exact[q, others].min() >= bound[q]
        assert bound[q] >= dist[q, -1] - 1.0  # and it is not vacuous: near the farthest returned
    np.testing.assert_allclose(dist, np.take_along_axis(exact, ids, axis=1), atol=1e-4)


def test_matching_with_and_without_the_cache_chooses_the_same_tiles() -> None:
    index = TileIndex(_pool(400))
    frames = _pan(10)
    for rules in (TileRules(), TileRules(max_uses=2, min_distance=2)):
        cached = TileMatcher(index, GRID, rules)
        plain = TileMatcher(index, GRID, rules)
        plain.cache = None
        a = [f.grid for f in cached.match(frames[:4]) + cached.match(frames[4:])]
        b = [f.grid for f in plain.match(frames)]
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert cached.cache is not None and cached.cache.hits > 0


# --- describing frames ---------------------------------------------------------------------


def test_a_whole_mosaic_is_described_bit_for_bit_as_its_tiles_cut_apart() -> None:
    side = SPEC.size
    image = _u8(cv2.resize(colour_images()[1], (GRID[0] * side, GRID[1] * side), interpolation=cv2.INTER_AREA))
    tiles = image.reshape(GRID[1], side, GRID[0], side, 3).transpose(0, 2, 1, 3, 4).reshape(-1, side, side, 3)
    np.testing.assert_array_equal(describe_mosaic(image, *GRID), describe_tiles(np.ascontiguousarray(tiles)))


def test_frames_decoded_at_the_describe_size_describe_cells_as_the_full_frames_do(tmp_path: Path) -> None:
    video = make_test_video(tmp_path / "clip.mp4", colour_images()[:2], fps=5, size=(640, 360), audio=False)
    geometry = CellGeometry.for_frame(640, 360, GRID)  # 40 px cells, described at 128x72
    scaled = TileFrames(FrameReader(video), geometry, SPEC, batch=4)
    got = np.concatenate([np.stack(batch.cells) for batch in scaled.items()])
    full = np.stack([describe_frame(f.image, geometry, SPEC) for f in FrameReader(video)])
    assert got.shape == full.shape and describe_size(geometry, SPEC) == (128, 72)
    gap = np.linalg.norm(got - full, axis=-1)  # RMS ΔE per cell, between two area scalers
    assert gap.mean() < 1.0 and np.percentile(gap, 99) < 4.0
    assert gap.max() > 0  # the decoder's scaler really was used


def _u8(image: NDArray[np.generic]) -> NDArray[np.uint8]:
    return np.ascontiguousarray(image, dtype=np.uint8)


# --- composing -------------------------------------------------------------------------------


def test_a_grid_of_one_cell_size_is_composed_cell_by_cell_as_the_general_path_does() -> None:
    rng = np.random.default_rng(7)
    atlas = np.stack([atlas_tile(image, SPEC.size) for image in real_images()[:6]])
    geometry = CellGeometry.for_frame(240, 120, (6, 4))  # 40 x 30 px cells: the uniform path
    composer = TileComposer(atlas, geometry)
    for _ in range(2):  # the second frame from the tile cache
        grid = rng.integers(0, atlas.shape[0], (4, 6)).astype(np.int32)
        out = composer.compose(grid)
        for row in range(4):
            for col in range(6):
                x0, y0, x1, y1 = geometry.box(row, col)
                # 40 px wide from 32: enlarged, bilinear (as every tile the composer enlarges)
                expected = cv2.resize(atlas[grid[row, col]], (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
                np.testing.assert_array_equal(out[y0:y1, x0:x1], expected)
