"""Tile mode: descriptors, grid geometry, matching rules, coherence, composing, grid records, bundle tile data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import faiss
import numpy as np
import pytest
from click.testing import CliRunner
from numpy.typing import NDArray

from fluxframe_index import cli as index_cli
from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_index.ivf import build_ivf_index
from fluxframe_index.update import update_bundle
from fluxframe_render.tile_compose import TileComposer, lab_shift
from fluxframe_render.tile_match import TileIndex, TileMatcher, TileRules
from fluxframe_render.tile_record import TILE_GRIDS, TileGridLog, read_tile_grids
from fluxframe_render.tiles import CellGeometry, cell_edges, describe_frame, describe_size, parse_grid
from shared.bundle import ATLAS, MANIFEST, TILE_INDEX, TILES, Bundle, open_bundle
from shared.errors import BundleError, UsageError
from shared.hashing import sha256_json
from shared.search import open_ivf
from shared.spec import FeatureSpec
from shared.tiles import TileSpec, describe_tiles
from tests.pools import colour_images, copy_tree, crop_tiles

SPEC = TileSpec()


def _uniform(bgr: tuple[int, int, int], side: int = 32) -> NDArray[np.uint8]:
    return np.full((1, side, side, 3), bgr, dtype=np.uint8)


def _lab(bgr: tuple[int, int, int]) -> NDArray[np.float32]:
    pixel = np.array([[bgr]], dtype=np.float32) / 255
    return np.asarray(cv2.cvtColor(pixel, cv2.COLOR_BGR2Lab)[0, 0], dtype=np.float32)


def _frame(index: int, width: int, height: int) -> NDArray[np.uint8]:
    image = colour_images()[index]
    return _u8(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


def _u8(image: NDArray[np.generic]) -> NDArray[np.uint8]:
    return np.ascontiguousarray(image, dtype=np.uint8)


def _cell_means(image: NDArray[np.uint8], geometry: CellGeometry) -> NDArray[np.float32]:
    """Mean CIELAB of every cell [cells, 3] (through the descriptor, unscaled)."""
    cells = describe_frame(image, geometry, SPEC).reshape(geometry.cells, -1, 3)
    means: NDArray[np.float32] = cells.mean(axis=1) * SPEC.grid
    return means


# --- shared descriptor -------------------------------------------------------------------


def test_descriptor_distance_of_two_flat_colours_is_their_delta_e() -> None:
    a, b = (30, 120, 200), (90, 60, 40)
    da, db = describe_tiles(_uniform(a)), describe_tiles(_uniform(b))
    assert da.shape == (1, SPEC.dim) and da.dtype == np.float32
    assert float(np.linalg.norm(da - db)) == pytest.approx(float(np.linalg.norm(_lab(a) - _lab(b))), rel=1e-4)


def test_descriptor_keeps_the_layout() -> None:
    left_dark = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    left_dark[:, :, 16:] = 255
    mirrored = left_dark[:, :, ::-1].copy()
    # Same mean colour, opposite layout: every cell goes black <-> white, so the RMS ΔE is 100.
    distance = float(np.linalg.norm(describe_tiles(left_dark) - describe_tiles(mirrored)))
    assert distance == pytest.approx(100.0, rel=1e-3)
    half = left_dark.copy()
    half[:, 16:] = mirrored[:, 16:]  # the bottom half now agrees with the mirror: half the cells differ
    assert float(np.linalg.norm(describe_tiles(half) - describe_tiles(mirrored))) == pytest.approx(100 * np.sqrt(0.5))


# --- grid geometry -----------------------------------------------------------------------


def test_parse_grid() -> None:
    assert parse_grid("32x18") == (32, 18)
    assert parse_grid(" 4 X 3 ") == (4, 3)
    for bad in ("32", "32x", "x18", "0x5", "32x18x2", "-3x2", "1001x2", "axb"):
        with pytest.raises(UsageError, match="--tiles"):
            parse_grid(bad)


@pytest.mark.parametrize(("length", "count"), [(1280, 32), (1283, 32), (7, 3), (720, 18), (5, 5)])
def test_cells_cover_the_frame_exactly(length: int, count: int) -> None:
    edges = cell_edges(length, count)
    sizes = np.diff(edges)
    assert edges[0] == 0 and edges[-1] == length and len(sizes) == count
    assert sizes.max() - sizes.min() <= 1


def _flat_cells(geometry: CellGeometry, seed: int) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """A frame whose every cell (geometry.boxes()) is one flat random colour, and those colours [cells, 3]."""
    colours = np.random.default_rng(seed).integers(0, 256, size=(geometry.cells, 3), dtype=np.uint8)
    frame = np.empty((geometry.height, geometry.width, 3), dtype=np.uint8)
    for colour, (x0, y0, x1, y1) in zip(colours, geometry.boxes(), strict=True):
        frame[y0:y1, x0:x1] = colour
    return frame, colours


@pytest.mark.parametrize(("size", "grid"), [((1280, 720), (32, 18)), ((330, 190), (8, 6)), ((160, 90), (8, 6))])
def test_each_cell_is_described_from_its_own_pixels(size: tuple[int, int], grid: tuple[int, int]) -> None:
    """Every block of a flat cell is that cell's colour: no block takes in a neighbour cell, however
    the cells divide the frame (even 40 px, uneven 41-42 px, and 20 px cells enlarged)."""
    geometry = CellGeometry.for_frame(*size, grid)
    frame, colours = _flat_cells(geometry, seed=sum(size))
    blocks = describe_frame(frame, geometry, SPEC).reshape(geometry.cells, SPEC.grid**2, 3) * SPEC.grid
    expected = np.stack([_lab((int(c[0]), int(c[1]), int(c[2]))) for c in colours])
    error = np.linalg.norm(blocks - expected[:, None, :], axis=-1)  # ΔE per block
    if size[0] % grid[0] == 0 and size[1] % grid[1] == 0:
        assert float(error.max()) < 0.05  # cell edges fall on pixel edges at the describe size too
    else:
        # Uneven cells' integer edges sit up to half a pixel from where the whole-frame scaling
        # puts them: only the blocks along an edge take in a sliver of the neighbour.
        inner = error.reshape(geometry.cells, SPEC.grid, SPEC.grid)[:, 1:-1, 1:-1]
        assert float(inner.max()) < 0.05 and float(np.median(error)) < 0.05


def test_frames_are_described_as_their_cells_cut_and_scaled_to_the_atlas_size() -> None:
    """The describe size's shortcut against the definition: each cell cut out, area-scaled to the
    32 px tile and described per pixel as the pool's atlas tiles are (real photos, 1280x720, 32x18)."""
    geometry = CellGeometry.for_frame(1280, 720, (32, 18))
    assert describe_size(geometry, SPEC) == (256, 144)
    errors = []
    for index in range(3):
        frame = _frame(index, 1280, 720)
        cut = _u8(
            np.stack(
                [
                    cv2.resize(frame[y0:y1, x0:x1], (SPEC.size, SPEC.size), interpolation=cv2.INTER_AREA)
                    for x0, y0, x1, y1 in geometry.boxes()
                ]
            )
        )
        errors.append(np.linalg.norm(describe_frame(frame, geometry, SPEC) - describe_tiles(cut), axis=1))
    rms = np.concatenate(errors)  # RMS ΔE over each cell's blocks
    assert float(rms.mean()) < 0.3 and float(np.percentile(rms, 99)) < 0.8


def test_a_frame_of_another_shape_is_refused() -> None:
    geometry = CellGeometry.for_frame(1280, 720, (32, 18))
    describe_frame(_frame(0, 640, 360), geometry, SPEC)  # decoded smaller: the same shape
    with pytest.raises(ValueError, match="not the shape"):
        describe_frame(_frame(0, 720, 1280), geometry, SPEC)


def test_a_grid_finer_than_the_frame_is_refused() -> None:
    with pytest.raises(UsageError, match="more cells"):
        CellGeometry.for_frame(20, 10, (21, 5))


# --- matching ----------------------------------------------------------------------------


def test_a_frame_made_of_pool_tiles_finds_each_tile_and_is_reproduced(opened_small_bundle: Bundle) -> None:
    bundle = opened_small_bundle
    atlas, descriptors = bundle.atlas, bundle.tile_descriptors
    cols, rows = 4, 3
    order = np.random.default_rng(3).permutation(bundle.count)[: cols * rows]
    frame = np.concatenate([np.concatenate(list(atlas[order[r * cols : (r + 1) * cols]]), axis=1) for r in range(rows)])
    geometry = CellGeometry.for_frame(frame.shape[1], frame.shape[0], (cols, rows))
    matcher = TileMatcher(TileIndex(descriptors), (cols, rows), TileRules(max_uses=1))
    [chosen] = matcher.match([describe_frame(frame, geometry, bundle.tile_spec())])
    assert chosen.grid.ravel().tolist() == order.tolist()
    # Frames are described from 2x2-pixel means (describe_size), tiles per pixel: close, not equal.
    assert float(chosen.distance.max()) < 1.5
    assert np.array_equal(TileComposer(atlas, geometry).compose(chosen.grid), frame)

    # The same frame enlarged to 40 px cells (as at 1280x720 with 32x18 tiles) still finds every tile.
    big = _u8(cv2.resize(frame, (cols * 40, rows * 40), interpolation=cv2.INTER_LINEAR))
    geometry = CellGeometry.for_frame(big.shape[1], big.shape[0], (cols, rows))
    [chosen] = TileMatcher(TileIndex(descriptors), (cols, rows)).match([describe_frame(big, geometry, SPEC)])
    assert chosen.grid.ravel().tolist() == order.tolist()


def _violations(grid: NDArray[np.int32], max_uses: int, min_distance: int) -> int:
    bad = 0
    ids, counts = np.unique(grid, return_counts=True)
    bad += int((counts > max_uses).sum()) if max_uses else 0
    for image in ids.tolist():
        places = np.argwhere(grid == image)
        for i in range(len(places)):
            for j in range(i + 1, len(places)):
                if np.abs(places[i] - places[j]).max() < min_distance:
                    bad += 1
    return bad


def test_reuse_rules_are_never_violated() -> None:
    pool = crop_tiles(300)
    index = TileIndex(describe_tiles(pool))
    grid = (16, 9)
    frames = [_frame(i, 320, 180) for i in range(6)]
    geometry = CellGeometry.for_frame(320, 180, grid)
    descriptors = [describe_frame(f, geometry, SPEC) for f in frames]
    free = TileMatcher(index, grid, TileRules(coherence_margin=None)).match(descriptors)
    # Without rules the best tiles repeat, side by side: the rules below have work to do.
    assert sum(_violations(f.grid, 2, 3) for f in free) > 20
    ruled = TileMatcher(index, grid, TileRules(max_uses=2, min_distance=3)).match(descriptors)
    assert all(_violations(f.grid, 2, 3) == 0 for f in ruled)
    only_once = TileMatcher(index, grid, TileRules(max_uses=1, candidates=4)).match(descriptors[:2])
    assert all(len(np.unique(f.grid)) == grid[0] * grid[1] for f in only_once)


def test_rules_a_pool_cannot_meet_are_a_clear_error() -> None:
    index = TileIndex(describe_tiles(crop_tiles(20)))
    geometry = CellGeometry.for_frame(80, 60, (8, 6))
    matcher = TileMatcher(index, (8, 6), TileRules(max_uses=1))
    with pytest.raises(UsageError, match="cannot be met by a pool of 20 images"):
        matcher.match([describe_frame(_frame(0, 80, 60), geometry, SPEC)])


def _two_frames_of_a_shot() -> tuple[TileIndex, tuple[int, int], NDArray[np.float32], NDArray[np.float32]]:
    """A 400-tile index, a 16x9 grid and the cell descriptors of two frames of one shot: the second a
    little brighter and shifted by a few pixels."""
    index = TileIndex(describe_tiles(crop_tiles(400, seed=1)))
    grid = (16, 9)
    geometry = CellGeometry.for_frame(320, 180, grid)
    first = _frame(2, 320, 180)
    second = _u8(cv2.convertScaleAbs(np.roll(first, 3, axis=1), alpha=1.08, beta=6))
    d1, d2 = (describe_frame(f, geometry, SPEC) for f in (first, second))
    return index, grid, d1, d2


def test_coherence_keeps_a_tile_within_the_margin_and_switches_outside_it() -> None:
    index, grid, d1, d2 = _two_frames_of_a_shot()
    margin = 3.0
    matcher = TileMatcher(index, grid, TileRules(coherence_margin=margin))
    [a, b] = matcher.match([d1, d2])
    best_d, best_i = index.search(d2, 1)
    held_d = index.distances(d2, a.grid.reshape(-1, 1).astype(np.int64))[:, 0]
    within = held_d <= best_d[:, 0] + margin
    chosen = b.grid.ravel()
    assert np.array_equal(chosen[within], a.grid.ravel()[within])
    assert np.array_equal(chosen[~within], best_i[~within, 0])
    # Both branches were exercised: held cells whose best changed, and cells that had to switch.
    assert (within & (best_i[:, 0] != a.grid.ravel())).sum() > 5
    assert (~within).sum() > 5
    # Without coherence those held cells switch to their best.
    [_, free] = TileMatcher(index, grid, TileRules(coherence_margin=None)).match([d1, d2])
    assert np.array_equal(free.grid.ravel(), best_i[:, 0])


def test_under_reuse_rules_coherence_compares_with_what_the_rules_would_give() -> None:
    index, grid, d1, d2 = _two_frames_of_a_shot()
    margin, rules = 3.0, {"max_uses": 2, "min_distance": 3}
    [a, b] = TileMatcher(index, grid, TileRules(coherence_margin=margin, **rules)).match([d1, d2])
    unheld = TileMatcher(index, grid, TileRules(coherence_margin=None, **rules))
    unheld.resume(a.grid)  # no state is used without coherence: frame 2 as the rules alone choose it
    [fresh] = unheld.match([d2])
    previous_d = index.distances(d2, a.grid.reshape(-1, 1).astype(np.int64))[:, 0]
    keep = previous_d <= fresh.distance.ravel() + margin
    assert np.array_equal(b.grid.ravel()[keep], a.grid.ravel()[keep])
    assert keep.sum() > (previous_d <= index.search(d2, 1)[0][:, 0] + margin).sum()  # more than nearest-only
    assert _violations(b.grid, 2, 3) == 0


def test_batches_and_resume_give_the_same_grids_as_one_run() -> None:
    index = TileIndex(describe_tiles(crop_tiles(300, seed=2)), block_rows=64)
    grid = (8, 6)
    geometry = CellGeometry.for_frame(160, 90, grid)
    rng = np.random.default_rng(5)
    base = _frame(1, 160, 90)
    frames = [
        describe_frame(_u8(cv2.convertScaleAbs(base, alpha=1.0, beta=int(b))), geometry, SPEC)
        for b in rng.integers(-20, 20, 9)
    ]
    rules = TileRules(max_uses=3, min_distance=2, coherence_margin=2.5)
    whole = [f.grid for f in TileMatcher(index, grid, rules).match(frames)]
    pieces: list[NDArray[np.int32]] = []
    for start, stop in ((0, 2), (2, 7), (7, 9)):
        matcher = TileMatcher(index, grid, rules)  # a new process after kill -9: state from the record only
        matcher.resume(pieces[-1] if pieces else None)
        pieces.extend(f.grid for f in matcher.match(frames[start:stop]))
    assert all(np.array_equal(a, b) for a, b in zip(whole, pieces, strict=True))


# --- composing ---------------------------------------------------------------------------


def test_composer_fills_uneven_cells_and_resizes_each_tile_once_per_size() -> None:
    atlas = crop_tiles(10)
    geometry = CellGeometry.for_frame(103, 61, (5, 4))  # cells of 20/21 x 15/16 px
    composer = TileComposer(atlas, geometry)
    grid = np.arange(20, dtype=np.int32).reshape(4, 5) % 3
    out = composer.compose(grid)
    assert out.shape == (61, 103, 3)
    for row in range(4):
        for col in range(5):
            x0, y0, x1, y1 = geometry.box(row, col)
            expected = cv2.resize(atlas[grid[row, col]], (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
            assert np.array_equal(out[y0:y1, x0:x1], expected)
    sizes = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in geometry.boxes()}
    assert composer.resizes <= 3 * len(sizes)
    composer.compose(grid)
    assert composer.resizes <= 3 * len(sizes)  # the second frame is all cache hits


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_colour_transfer_moves_each_tile_mean_toward_its_cell_by_the_strength(strength: float) -> None:
    atlas = crop_tiles(40, seed=4)
    geometry = CellGeometry.for_frame(192, 96, (6, 3))
    frame = _frame(3, 192, 96)
    cells = describe_frame(frame, geometry, SPEC)
    matcher = TileMatcher(TileIndex(describe_tiles(atlas)), (6, 3), TileRules(coherence_margin=None))
    [chosen] = matcher.match([cells])
    composer = TileComposer(atlas, geometry)
    shift = lab_shift(cells, describe_tiles(atlas)[chosen.grid.ravel()], strength)
    plain, moved = composer.compose(chosen.grid), composer.compose(chosen.grid, shift)
    target = _cell_means(frame, geometry)
    before = np.linalg.norm(_cell_means(plain, geometry) - target, axis=1)
    after = np.linalg.norm(_cell_means(moved, geometry) - target, axis=1)
    # Gamut clipping keeps a few cells from moving all the way: compare the medians.
    assert float(np.median(after)) == pytest.approx((1 - strength) * float(np.median(before)), abs=2.0)


# --- records -----------------------------------------------------------------------------


def test_grid_log_appends_survives_a_torn_write_and_truncates_to_the_checkpoint(tmp_path: Path) -> None:
    grids = np.arange(5 * 3 * 4, dtype=np.int32).reshape(5, 3, 4)
    log = TileGridLog.open(tmp_path / "tiles.log", 3, 4)
    log.append(grids[:2])
    log.append(grids[2:4])
    log.close()
    with open(tmp_path / "tiles.log", "ab") as handle:  # a kill in the middle of the next append
        handle.write(grids[4].tobytes()[:17])
    log = TileGridLog.open(tmp_path / "tiles.log", 3, 4)
    assert log.frames == 4 and np.array_equal(log.read(), grids[:4])
    log.truncate(3)  # the checkpoint committed 3 frames
    log.append(grids[3:])
    log.finish(tmp_path / TILE_GRIDS)
    assert not (tmp_path / "tiles.log").exists()
    assert np.array_equal(read_tile_grids(tmp_path / TILE_GRIDS), grids)
    with pytest.raises(Exception, match="not a tile log of a 5x3 grid"):
        (tmp_path / "other.log").write_bytes((tmp_path / "tiles.npy").read_bytes()[:40])
        TileGridLog.open(tmp_path / "other.log", 3, 5)


# --- bundles -----------------------------------------------------------------------------


def test_bundle_tile_data_matches_its_images(opened_small_bundle: Bundle) -> None:
    bundle = opened_small_bundle
    spec = bundle.tile_spec()
    assert bundle.manifest.files[ATLAS]["bytes"] == 128 + bundle.count * spec.atlas_bytes_per_image
    assert np.array_equal(describe_tiles(np.asarray(bundle.atlas)), bundle.tile_descriptors)
    assert isinstance(bundle.atlas, np.memmap) and isinstance(bundle.tile_descriptors, np.memmap)


def test_a_bundle_without_tile_data_says_how_to_add_it_and_update_adds_it(
    small_pool: Path, small_bundle: Path, tmp_path: Path
) -> None:
    spec = FeatureSpec(method="spatial_color")
    dest = tmp_path / "bundle"
    build_bundle(small_pool, dest, BuildOptions(spec=spec, chunk_size=5, tile_size=None))
    plain = open_bundle(dest)
    assert not plain.has_tiles and ATLAS not in plain.manifest.files
    with pytest.raises(BundleError) as caught:
        _ = plain.atlas
    message = str(caught.value)
    with pytest.raises(BundleError, match="no tile data"):
        TileIndex.for_bundle(plain)
    assert "\n" not in message and "no tile data" in message and "--update" in message

    _, counts = update_bundle(small_pool, dest, BuildOptions(spec=spec, chunk_size=5))
    assert counts.kept == plain.count and counts.added == counts.changed == 0
    updated, full = open_bundle(dest), open_bundle(small_bundle)
    assert updated.manifest.extra["tiles_added"] is True
    assert np.array_equal(updated.vectors, plain.vectors)  # features kept, not recomputed
    assert np.array_equal(updated.atlas, full.atlas)
    assert np.array_equal(updated.tile_descriptors, full.tile_descriptors)


def test_a_version_1_bundle_still_opens_without_tiles(small_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(small_bundle, tmp_path / "bundle")
    data = json.loads((bundle / MANIFEST).read_text())
    data.update(format_version=1)
    del data["tiles"], data["files"][ATLAS], data["files"][TILES], data["bundle_id"]
    (bundle / ATLAS).unlink()
    (bundle / TILES).unlink()
    data["bundle_id"] = sha256_json(data)
    (bundle / MANIFEST).write_text(json.dumps(data))
    opened = open_bundle(bundle)
    assert opened.manifest.format_version == 1 and not opened.has_tiles
    with pytest.raises(BundleError, match="no tile data"):
        opened.tile_spec()


def test_the_tile_ivf_index_finds_what_the_exact_scan_finds(tmp_path: Path) -> None:
    descriptors = describe_tiles(crop_tiles(1500, seed=6))
    np.save(tmp_path / TILES, descriptors)
    info = build_ivf_index(tmp_path / TILES, tmp_path / TILE_INDEX, nlist=None, progress=False, metric=faiss.METRIC_L2)
    assert info.nlist > 8
    geometry = CellGeometry.for_frame(320, 180, (16, 9))
    queries = np.concatenate([describe_frame(_frame(i, 320, 180), geometry, SPEC) for i in range(3)])
    exact_d, exact_i = TileIndex(descriptors).search(queries, 8)
    every_list = TileIndex(descriptors, ivf=open_ivf(tmp_path / TILE_INDEX), nprobe=info.nlist)
    assert np.array_equal(every_list.search(queries, 8)[1], exact_i)
    default = TileIndex(descriptors, ivf=open_ivf(tmp_path / TILE_INDEX))
    ivf_d, ivf_i = default.search(queries, 8)
    assert (ivf_i[:, 0] == exact_i[:, 0]).mean() > 0.9
    assert np.all(ivf_d >= exact_d - 1e-6)  # never closer than the true nearest: distances are exact


def test_an_ivf_bundle_has_a_tile_index(small_pool: Path, small_bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    build_bundle(small_pool, dest, BuildOptions(spec=FeatureSpec(method="spatial_color"), index_kind="ivf"))
    bundle = open_bundle(dest)
    assert bundle.tile_index_path == dest / TILE_INDEX and TILE_INDEX in bundle.manifest.files
    index = TileIndex.for_bundle(bundle)
    assert index.ivf is not None and TileIndex.for_bundle(open_bundle(small_bundle)).ivf is None
    assert np.array_equal(index.search(bundle.tile_descriptors[:5], 1)[1][:, 0], np.arange(5))


def test_ff_index_build_tile_size_zero_writes_no_tile_data_and_info_says_how_to_add_it(
    small_pool: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    dest = tmp_path / "bundle"
    built = runner.invoke(index_cli.main, ["build", str(small_pool), str(dest), "--quiet", "--tile-size", "0"])
    assert built.exit_code == 0, built.output
    assert not open_bundle(dest).has_tiles
    info = runner.invoke(index_cli.main, ["info", str(dest)])
    assert "tiles       none (add them with ff-index build POOL BUNDLE --update)" in info.output
