"""Feature extractors on real pictures: retrieval quality, query-time block weights, block information, dims.

The retrieval test runs the real path end to end: JPEG files -> build_bundle ->
bundle vectors; degraded copies -> shared.images decode + prepare -> the bundle's
own extractor -> weight_query -> Searcher.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from fluxframe_index.build import BuildOptions, build_bundle
from shared.bundle import open_bundle
from shared.features.base import Extractor, block_slices, weight_query
from shared.features.classic import hog_geometry
from shared.features.gradients import Gradients
from shared.features.registry import create_extractor, method_info
from shared.features.texture import magnitude_bins
from shared.images import decode_image, load_prepared, prepare_image
from shared.search import Searcher
from shared.spec import FeatureSpec
from tests.pools import (
    DEGRADATIONS,
    decode_bytes,
    degrade,
    degraded_bytes,
    encode_bmp,
    make_pool,
    pool_images,
    write_jpeg,
)

Image = NDArray[np.uint8]

# Every classic method and grid the issue names; all compare at the default 256 px, 16:9.
SPECS = {
    "canny": FeatureSpec(method="canny"),
    "spatial_pyramid-2": FeatureSpec(method="spatial_pyramid", spatial_grid=2),
    "spatial_pyramid-3": FeatureSpec(method="spatial_pyramid", spatial_grid=3),
    "hog": FeatureSpec(method="hog"),
    "spatial_color": FeatureSpec(method="spatial_color"),
}
DIMS = {"canny": 376, "spatial_pyramid-2": 1088, "spatial_pyramid-3": 2448, "hog": 1652, "spatial_color": 256}
QUERY_SIZE = (256, 144)
DEFAULT_WEIGHTS = {"edge": 0.33, "texture": 0.33, "color": 0.34}
RETRIEVAL_POOL = 90
MIN_RECALL = 0.9


def make_extractor(spec: FeatureSpec, asset_dir: Path) -> Extractor:
    asset_dir.mkdir(parents=True, exist_ok=True)
    method_info(spec.method).prepare_assets(spec, asset_dir)
    return create_extractor(spec, asset_dir)


@pytest.fixture(scope="module")
def extractors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Extractor]:
    root = tmp_path_factory.mktemp("assets")
    return {name: make_extractor(spec, root / name) for name, spec in SPECS.items()}


@pytest.fixture(scope="module")
def prepared_real() -> list[Image]:
    """40 distinct real pictures prepared to the comparison size (in memory, no JPEG)."""
    return [prepare_image(image, QUERY_SIZE) for image in pool_images(40, seed=11, max_side=640)]


# --- retrieval quality ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retrieval_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("retrieval-pool")
    make_pool(root, RETRIEVAL_POOL, seed=3, max_side=640)
    return root


@pytest.fixture(scope="module")
def degraded_queries(retrieval_pool: Path) -> dict[str, tuple[list[str], list[Image]]]:
    """Per degradation: (pool-relative path of the source, prepared query) for every pool picture.

    Degraded copies are files' bytes (JPEG q=40 or PNG) decoded and prepared by shared.images,
    as ff-render prepares anything it compares.
    """
    paths = sorted(retrieval_pool.rglob("*.jpg"))
    originals = [decode_bytes(p.read_bytes()) for p in paths]
    rels = [p.relative_to(retrieval_pool).as_posix() for p in paths]
    out = {}
    for k, kind in enumerate(DEGRADATIONS):
        rng = np.random.default_rng(100 + k)
        prepared = []
        for image in originals:
            decoded = decode_image(degraded_bytes(image, kind, rng), min_size=QUERY_SIZE, aspect=16 / 9)
            prepared.append(prepare_image(decoded, QUERY_SIZE))
        out[kind] = (rels, prepared)
    return out


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.slow
def test_degraded_copies_find_their_source(
    name: str,
    retrieval_pool: Path,
    degraded_queries: dict[str, tuple[list[str], list[Image]]],
    tmp_path: Path,
) -> None:
    spec = SPECS[name]
    assert spec.prepared_size() == QUERY_SIZE
    build_bundle(retrieval_pool, tmp_path / "bundle", BuildOptions(spec=spec, jobs=1, chunk_size=32))
    bundle = open_bundle(tmp_path / "bundle")
    assert bundle.count == RETRIEVAL_POOL
    ids = {path: i for i, path in enumerate(bundle.read_images_table(["path"]).column("path").to_pylist())}
    extractor = bundle.extractor()
    searcher = Searcher(bundle.vectors)
    recall = {}
    for kind, (rels, prepared) in degraded_queries.items():
        queries = weight_query(extractor.extract(prepared), extractor.blocks, DEFAULT_WEIGHTS)
        _, found = searcher.search(queries, 1)
        truth = np.array([ids[rel] for rel in rels])
        recall[kind] = float(np.mean(found[:, 0] == truth))
    print(f"recall@1 {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()))
    assert min(recall.values()) >= MIN_RECALL, f"{name} recall@1 below {MIN_RECALL}: {recall}"


# --- query-time weights -----------------------------------------------------------------------


def _unit_rows(x: NDArray[np.float32]) -> NDArray[np.float64]:
    x64 = x.astype(np.float64)
    return np.asarray(x64 / np.linalg.norm(x64, axis=1, keepdims=True), dtype=np.float64)


@pytest.mark.parametrize("name", list(SPECS))
def test_weighted_score_is_the_weighted_sum_of_block_cosines(
    name: str, extractors: dict[str, Extractor], prepared_real: list[Image]
) -> None:
    extractor = extractors[name]
    vectors = extractor.extract(prepared_real[:12])
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    slices = block_slices(extractor.blocks)
    assert [b.name for b in extractor.blocks] == ["edge", "texture", "color"]
    for s in slices.values():
        # Each block is stored at norm 1/sqrt(3), whatever its dimension.
        np.testing.assert_allclose(np.linalg.norm(vectors[:, s], axis=1), 1 / np.sqrt(3), atol=1e-5)
    # The same block cosines computed straight from the separately normalised blocks.
    cos = {b: _unit_rows(vectors[:6, s]) @ _unit_rows(vectors[6:, s]).T for b, s in slices.items()}
    for weights in (
        DEFAULT_WEIGHTS,
        {"edge": 1.0, "texture": 0.0, "color": 0.0},
        {"edge": 0.0, "texture": 0.0, "color": 5.0},
        {"edge": 2.0, "texture": 1.0, "color": 1.0},  # sums to 4: auto-normalised
        {"edge": 0.1, "texture": 0.7},  # colour missing = 0
    ):
        total = sum(weights.values())
        expected = sum(weights.get(b, 0.0) / total * cos[b] for b in slices)
        scores = weight_query(vectors[:6], extractor.blocks, weights) @ vectors[6:].T
        np.testing.assert_allclose(scores, expected, atol=2e-6, err_msg=f"{name} {weights}")
    # Weights change only the query: the stored vectors are the same whatever the weights.
    equal = weight_query(vectors[:6], extractor.blocks, {"edge": 1.0, "texture": 1.0, "color": 1.0})
    np.testing.assert_allclose(equal @ vectors[6:].T, sum(cos.values()) / 3, atol=2e-6)


# --- every block carries information ------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_every_block_tells_real_pictures_apart(
    name: str, extractors: dict[str, Extractor], prepared_real: list[Image]
) -> None:
    extractor = extractors[name]
    vectors = extractor.extract(prepared_real)
    off_diagonal = ~np.eye(len(prepared_real), dtype=bool)
    for block, s in block_slices(extractor.blocks).items():
        unit = _unit_rows(vectors[:, s])
        similarity = (unit @ unit.T)[off_diagonal]
        # A block that scores every pair of different photos alike (a near-constant histogram)
        # adds nothing to the ranking: a defect.
        assert similarity.mean() < 0.9, f"{name} {block}: mean similarity {similarity.mean():.3f}"
        assert similarity.std() > 0.08, f"{name} {block}: similarity spread {similarity.std():.3f}"
        informative = np.mean(vectors[:, s].std(axis=0) > 1e-4)
        assert informative > 0.2, f"{name} {block}: only {informative:.0%} of its dimensions vary"


# --- dimensions and aspects ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_dims_match_the_table(name: str, extractors: dict[str, Extractor], prepared_real: list[Image]) -> None:
    spec, extractor = SPECS[name], extractors[name]
    assert method_info(spec.method).dim(spec) == DIMS[name]
    assert sum(b.dim for b in extractor.blocks) == DIMS[name]
    assert extractor.extract(prepared_real[:2]).shape == (2, DIMS[name])


@pytest.mark.parametrize(
    ("aspect", "size"), [((16, 9), (256, 144)), ((9, 16), (144, 256)), ((1, 1), (256, 256)), ((21, 9), (256, 112))]
)
def test_hog_works_at_any_aspect(aspect: tuple[int, int], size: tuple[int, int], tmp_path: Path) -> None:
    spec = FeatureSpec(method="hog", aspect_w=aspect[0], aspect_h=aspect[1])
    assert spec.prepared_size() == size
    rows, cols, hog_dim = hog_geometry(size)
    # The cell grid follows the frame: wider than tall for landscape, taller for portrait.
    assert (cols > rows) == (size[0] > size[1]) and (cols == rows) == (size[0] == size[1])
    extractor = make_extractor(spec, tmp_path)
    assert extractor.blocks[0].dim == hog_dim
    assert method_info("hog").dim(spec) == sum(b.dim for b in extractor.blocks)
    originals = pool_images(24, seed=5, min_side=480, max_side=800)
    stored = extractor.extract([prepare_image(img, size) for img in originals])
    assert stored.shape == (24, method_info("hog").dim(spec)) and np.isfinite(stored).all()
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    edge = block_slices(extractor.blocks)["edge"]
    rng = np.random.default_rng(9)
    for kind in ("shift", "noise", "brighten"):
        queries = extractor.extract([prepare_image(degrade(img, kind, rng), size) for img in originals])
        combined = weight_query(queries, extractor.blocks, DEFAULT_WEIGHTS) @ stored.T
        assert np.mean(combined.argmax(axis=1) == np.arange(24)) >= MIN_RECALL, (aspect, kind)
        # The HOG block alone recognises the pictures at this aspect too.
        edge_scores = _unit_rows(queries[:, edge]) @ _unit_rows(stored[:, edge]).T
        assert np.mean(edge_scores.argmax(axis=1) == np.arange(24)) >= MIN_RECALL, (aspect, kind, "hog block")


def test_dims_follow_the_comparison_size_and_grid() -> None:
    for size in (128, 256, 512):
        spec = FeatureSpec(method="hog", comparison_size=size)
        rows, cols, hog_dim = hog_geometry(spec.prepared_size())
        assert (rows, cols) == (4, 8)
        assert method_info("hog").dim(spec) == hog_dim + 32 + 4 * 216
    for grid, dim in ((2, 1088), (3, 2448)):
        for size in (128, 512):
            spec = FeatureSpec(method="spatial_pyramid", spatial_grid=grid, comparison_size=size)
            assert method_info("spatial_pyramid").dim(spec) == dim
    assert method_info("canny").dim(FeatureSpec(method="canny", aspect_w=4, aspect_h=3)) == 376
    assert method_info("spatial_color").dim(FeatureSpec(method="spatial_color", comparison_size=512)) == 256


# --- one function path for pool images and video frames -----------------------------------------


def test_pool_image_and_video_frame_give_the_same_vector(extractors: dict[str, Extractor], tmp_path: Path) -> None:
    for i, picture in enumerate(pool_images(3, seed=21, min_side=1200, max_side=1280)):
        jpeg = write_jpeg(tmp_path / f"p{i}.jpg", picture)
        bmp = tmp_path / f"p{i}.bmp"
        bmp.write_bytes(encode_bmp(picture))
        full = decode_bytes(jpeg.read_bytes())
        from_jpeg = load_prepared(jpeg, QUERY_SIZE)[0]
        from_bmp = load_prepared(bmp, QUERY_SIZE)[0]
        for name, extractor in extractors.items():
            # Pool side: read + DCT-scaled decode + prepare; frame side: an already decoded array.
            as_pool = extractor.extract([from_jpeg])
            as_frame = extractor.extract([prepare_image(full, QUERY_SIZE)])
            cosine = float((as_pool @ as_frame.T)[0, 0])
            assert cosine > 0.98, f"{name} picture {i}: cos {cosine:.4f}"
            # Without DCT scaling (BMP) both sides are the very same pixels, hence the very same vector.
            frame = extractor.extract([prepare_image(picture, QUERY_SIZE)])
            np.testing.assert_array_equal(extractor.extract([from_bmp]), frame)


def test_bundle_rows_are_what_the_bundle_extractor_gives(small_bundle: Path) -> None:
    bundle = open_bundle(small_bundle)
    extractor = bundle.extractor()
    size = bundle.spec.prepared_size()
    paths = bundle.image_paths(list(range(bundle.count)))
    prepared = [load_prepared(p, size)[0] for p in paths]
    # Bit for bit: the build's workers and ff-render run the same function on the same pixels.
    np.testing.assert_array_equal(np.asarray(bundle.vectors), extractor.extract(prepared))


@pytest.mark.parametrize("name", list(SPECS))
def test_a_vector_does_not_depend_on_its_batch(
    name: str, extractors: dict[str, Extractor], prepared_real: list[Image]
) -> None:
    extractor = extractors[name]
    batch = extractor.extract(prepared_real[:5])
    for i in range(5):
        np.testing.assert_array_equal(batch[i], extractor.extract([prepared_real[i]])[0])
    assert extractor.extract([]).shape == (0, DIMS[name])


def test_extractors_refuse_images_of_another_size(extractors: dict[str, Extractor]) -> None:
    wrong = np.zeros((100, 100, 3), dtype=np.uint8)
    for extractor in extractors.values():
        with pytest.raises(ValueError, match="expects 256x144"):
            extractor.extract([wrong])


# --- the gradient primitives -------------------------------------------------------------------


def _gradients(dx: NDArray[np.int16], dy: NDArray[np.int16]) -> Gradients:
    return Gradients(np.zeros(dx.shape, dtype=np.uint8), dx, dy)


@pytest.mark.parametrize("bins", [8, 9])
def test_orientation_bins_of_edge_pixels_and_of_all_pixels_are_the_unsigned_angle(bins: int) -> None:
    rng = np.random.default_rng(5)
    dx = rng.integers(-1020, 1021, (144, 256)).astype(np.int16)
    dy = rng.integers(-1020, 1021, (144, 256)).astype(np.int16)
    degrees = np.degrees(np.arctan2(dy.astype(np.float64), dx.astype(np.float64))) % 180.0
    expected = (degrees // (180.0 / bins)).astype(np.intp) % bins
    # Angles within a hair of a bin boundary may fall either side; every other pixel must agree.
    clear = np.abs(degrees / (180.0 / bins) - np.round(degrees / (180.0 / bins))) > 1e-3
    grads = _gradients(dx, dy)
    every = grads.orientation_bins(bins)
    np.testing.assert_array_equal(every[clear], expected[clear])
    at = np.flatnonzero(rng.random(dx.size) < 0.1)  # the tangent comparisons, used for Canny's edge pixels
    some = grads.orientation_bins(bins, at=at)
    np.testing.assert_array_equal(some[clear.ravel()[at]], expected.ravel()[at][clear.ravel()[at]])
    # Opposite gradients share a bin.
    np.testing.assert_array_equal(some, _gradients(-dx, -dy).orientation_bins(bins, at=at))


def test_magnitude_is_the_correctly_rounded_root_wherever_the_arrays_live() -> None:
    # OpenCV's float magnitude is approximate (it differs from the rounded root on ~30 % of such
    # pixels) and gave an ulp more or less for the same pixels at another memory alignment: a
    # picture's vector must not depend on where its arrays were allocated.
    rng = np.random.default_rng(6)
    dx = rng.integers(-1020, 1021, (144, 256)).astype(np.int16)
    dy = rng.integers(-1020, 1021, (144, 256)).astype(np.int16)
    reference = _gradients(dx, dy)
    exact = np.sqrt(dx.astype(np.float64) ** 2 + dy.astype(np.float64) ** 2).astype(np.float32)
    np.testing.assert_array_equal(reference.magnitude, exact)
    for offset in range(2, 64, 2):
        buffer = np.zeros(2 * dx.nbytes + 64, dtype=np.uint8)
        moved_dx = buffer[offset : offset + dx.nbytes].view(np.int16).reshape(dx.shape)
        moved_dy = buffer[offset + dx.nbytes : offset + 2 * dx.nbytes].view(np.int16).reshape(dy.shape)
        moved_dx[...], moved_dy[...] = dx, dy
        moved = _gradients(moved_dx, moved_dy)
        np.testing.assert_array_equal(moved.magnitude, reference.magnitude)
        np.testing.assert_array_equal(magnitude_bins(moved, 16), magnitude_bins(reference, 16))


def test_texture_bins_are_log_spaced_from_4_to_1200() -> None:
    magnitude = np.linspace(0, 1500, 150_001, dtype=np.float32)
    grads = _gradients(np.zeros(1, dtype=np.int16), np.zeros(1, dtype=np.int16))
    grads.__dict__["magnitude"] = magnitude  # the cached property, set to the magnitudes under test
    bins = magnitude_bins(grads, 16).astype(np.int64)
    assert (np.diff(bins) >= 0).all() and set(bins.tolist()) == set(range(16))
    assert bins[magnitude < 4].max() == 0 and bins[magnitude >= 1200].min() == 15
    # Equal ratios, equal bins: each inner bin spans 300 ** (1/14) = 1.50x, within the 0.09-octave
    # piecewise-linear log of the float's bit pattern.
    starts = [float(magnitude[np.argmax(bins == b)]) for b in range(1, 16)]
    ratios = np.array(starts[1:]) / np.array(starts[:-1])
    assert np.all(np.abs(np.log2(ratios) - np.log2(300 ** (1 / 14))) < 0.2)
