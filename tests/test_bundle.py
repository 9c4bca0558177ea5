"""Bundle format v2 (v1 still opens; see test_tiles): write atomically, open read-only and mmapped, verify,
refuse what is not right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shared import bundle as bundle_module
from shared.atomic import atomic_save_npy
from shared.bundle import (
    FORMAT_VERSION,
    IMAGES,
    IMAGES_SCHEMA,
    MANIFEST,
    REJECTED,
    REJECTED_SCHEMA,
    VECTORS,
    Bundle,
    IndexInfo,
    finalize_bundle,
    open_bundle,
    verify_bundle,
)
from shared.errors import BundleError
from shared.features.registry import create_extractor
from shared.hashing import sha256_file, sha256_json
from shared.images import prepare_image
from shared.spec import FeatureSpec
from tests.hostile.bundles import forge_image_paths
from tests.pools import copy_tree, pool_images


def test_paths_come_from_many_row_groups_in_any_order_within_a_bounded_cache(
    small_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups of 4 rows (65,536 in real bundles) and a cache that keeps a single group."""
    regrouped = forge_image_paths(small_bundle, tmp_path / "regrouped", {}, row_group_size=4)
    assert pq.ParquetFile(regrouped / IMAGES).metadata.num_row_groups == 3
    monkeypatch.setattr(bundle_module, "IMAGES_ROW_GROUP", 4)
    monkeypatch.setattr(bundle_module, "PATH_CACHE_BYTES", 1)
    bundle = open_bundle(regrouped)
    paths = bundle.read_images_table().column("path").to_pylist()
    order = [11, 0, 5, 11, 3, 8, 4, 4, 0]
    assert bundle.relative_paths(order) == [paths[i] for i in order]
    assert [p.name for p in bundle.image_paths(order)] == [Path(paths[i]).name for i in order]
    assert len(bundle._row_groups) == 1  # each new group pushed the previous one out
    with pytest.raises(BundleError, match="out of range"):
        bundle.relative_paths([12])


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if offset is None else offset
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(bundle: Path, change: Any, *, reseal: bool = False) -> None:
    """Rewrite the manifest through ``change(dict)``; its bundle_id is left as it was, or with
    ``reseal`` recomputed, so that a check other than the seal must catch the change."""
    path = bundle / MANIFEST
    data = json.loads(path.read_text())
    change(data)
    if reseal:
        data["bundle_id"] = sha256_json({k: v for k, v in data.items() if k != "bundle_id"})
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def test_built_bundle_opens_read_only_and_memory_mapped(opened_small_bundle: Bundle, small_bundle: Path) -> None:
    bundle = opened_small_bundle
    manifest = bundle.manifest
    assert manifest.format_version == FORMAT_VERSION
    assert manifest.spec.method == "spatial_color" and manifest.spec_sha256 == manifest.spec.sha256()
    assert sorted(manifest.files) == [
        "atlas.npy",
        "images.parquet",
        "projection.npy",
        "rejected.parquet",
        "tiles.npy",
        "vectors.npy",
    ]
    assert manifest.count == 12 and manifest.rejected_count == 0 and manifest.dim == 256
    assert manifest.index == IndexInfo(kind="flat")
    assert [(b.name, b.dim) for b in manifest.blocks] == [("edge", 16), ("texture", 16), ("color", 224)]
    for name, info in manifest.files.items():
        assert info == {"bytes": (small_bundle / name).stat().st_size, "sha256": sha256_file(small_bundle / name)}
    assert manifest.bundle_id == sha256_json(manifest.body())
    vectors = bundle.vectors
    assert isinstance(vectors, np.memmap)
    assert vectors.dtype == np.float32 and vectors.shape == (12, 256)
    assert not vectors.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        vectors[0, 0] = 1.0
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    table = bundle.read_images_table()
    assert table.schema.equals(IMAGES_SCHEMA)
    assert table.column("id").to_pylist() == list(range(12))
    paths = table.column("path").to_pylist()
    assert paths == sorted(paths)
    assert bundle.relative_paths([0, 11]) == [paths[0], paths[11]]
    assert all(p.is_file() for p in bundle.image_paths(list(range(12))))
    assert bundle.read_rejected_table().num_rows == 0


def test_verify_accepts_an_intact_bundle(small_bundle: Path) -> None:
    manifest = verify_bundle(small_bundle)
    assert manifest.count == 12


@pytest.mark.parametrize("name", [VECTORS, IMAGES, REJECTED, "projection.npy", MANIFEST])
def test_one_flipped_byte_fails_verify_naming_the_file(name: str, small_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(small_bundle, tmp_path / "bundle")
    _flip_byte(bundle / name)
    with pytest.raises(BundleError) as caught:
        verify_bundle(bundle)
    message = str(caught.value)
    assert str(bundle / name) in message and "\n" not in message
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        open_bundle(bundle)


def test_a_truncated_file_is_refused_even_without_hashing(small_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(small_bundle, tmp_path / "bundle")
    data = (bundle / VECTORS).read_bytes()
    (bundle / VECTORS).write_bytes(data[:-4])
    with pytest.raises(BundleError, match=r"vectors\.npy: size"):
        open_bundle(bundle, verify=False)


@pytest.mark.parametrize("name", [VECTORS, IMAGES, "projection.npy", MANIFEST])
def test_a_missing_file_is_refused(name: str, small_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(small_bundle, tmp_path / "bundle")
    (bundle / name).unlink()
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        open_bundle(bundle, verify=False)


@pytest.mark.parametrize("version", [0, 3, "1", "2", None, True])
def test_unknown_format_versions_are_refused(version: Any, small_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(small_bundle, tmp_path / "bundle")
    _edit_manifest(bundle, lambda m: m.__setitem__("format_version", version))
    with pytest.raises(BundleError, match="format version"):
        open_bundle(bundle)


@pytest.mark.parametrize("bad_name", ["../vectors.npy", "/etc/passwd", "sub/vectors.npy", "..", "", "a\\b"])
def test_manifest_file_names_must_stay_inside_the_bundle(bad_name: str, small_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(small_bundle, tmp_path / "bundle")

    def add_entry(manifest: dict[str, Any]) -> None:
        manifest["files"][bad_name] = {"bytes": 1, "sha256": "0" * 64}

    _edit_manifest(bundle, add_entry, reseal=True)
    with pytest.raises(BundleError, match="refuses file name"):
        open_bundle(bundle)


def test_an_edited_manifest_is_refused(small_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_tree(small_bundle, tmp_path / "bundle")
    _edit_manifest(bundle, lambda m: m.__setitem__("count", 11))
    with pytest.raises(BundleError, match="bundle_id does not match"):
        open_bundle(bundle, verify=False)
    bundle = copy_tree(small_bundle, tmp_path / "bundle2")
    _edit_manifest(bundle, lambda m: m["spec"].__setitem__("comparison_size", 128))
    with pytest.raises(BundleError, match="bundle_id does not match"):
        open_bundle(bundle, verify=False)
    _edit_manifest(bundle, lambda m: None, reseal=True)  # sealed again: the spec's own hash still differs
    with pytest.raises(BundleError, match="spec_sha256"):
        open_bundle(bundle, verify=False)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle"):
        open_bundle(tmp_path / "nothing")
    with pytest.raises(BundleError, match="not a FluxFrame bundle"):
        open_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        open_bundle(tmp_path)


def _work_dir(folder: Path, vectors: np.ndarray[Any, np.dtype[np.float32]], paths: list[str]) -> Path:
    folder.mkdir()
    atomic_save_npy(folder / VECTORS, vectors)
    n = len(paths)
    rows = {
        "id": list(range(n)),
        "path": paths,
        "raw_path": [p.encode() for p in paths],
        "bytes": [1000] * n,
        "mtime_ns": [0] * n,
        "width": [640] * n,
        "height": [360] * n,
        "sha256": ["0" * 64] * n,
    }
    pq.write_table(pa.table(rows, schema=IMAGES_SCHEMA), folder / IMAGES)
    pq.write_table(pa.table({"path": [], "reason": [], "detail": []}, schema=REJECTED_SCHEMA), folder / REJECTED)
    return folder


def test_finalize_writes_a_bundle_and_replaces_an_old_one_whole(tmp_path: Path) -> None:
    spec = FeatureSpec(method="hog")
    extractor = create_extractor(spec, tmp_path)
    vectors = extractor.extract([prepare_image(img, spec.prepared_size()) for img in pool_images(5, max_side=480)])
    dest = tmp_path / "bundle"
    common: dict[str, Any] = {
        "spec": spec,
        "blocks": tuple(extractor.blocks),
        "pool_root": tmp_path,
        "pool_fingerprint": "f" * 64,
        "rejected_count": 0,
        "dim": vectors.shape[1],
        "index": IndexInfo(),
    }
    first = finalize_bundle(
        _work_dir(tmp_path / "w1", vectors, [f"{i}.jpg" for i in range(5)]), dest, count=5, **common
    )
    opened = open_bundle(dest)
    assert opened.bundle_id == first.bundle_id
    np.testing.assert_array_equal(np.asarray(opened.vectors), vectors)
    assert not (tmp_path / "w1").exists()

    second = finalize_bundle(
        _work_dir(tmp_path / "w2", vectors[:3], ["a.jpg", "b.jpg", "c.jpg"]), dest, count=3, **common
    )
    reopened = open_bundle(dest)
    assert reopened.bundle_id == second.bundle_id != first.bundle_id
    assert reopened.count == 3 and reopened.relative_paths([2]) == ["c.jpg"]
    # Nothing of the old bundle is left beside the new one.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
