"""ff-index build --update and ff-index merge: the same bundle a full build gives, for less work.

Pools are real pictures (skimage crops, flips and hues) written as JPEGs in the test;
"changed" files are re-encoded with other content, "touched" ones only get a new mtime.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fluxframe_index.build import BuildOptions, build_bundle, staging_dir
from fluxframe_index.cli import main as ff_index
from fluxframe_index.extract import ChunkStats
from fluxframe_index.merge import merge_bundles
from fluxframe_index.update import ID_REMAP, UpdateCounts, update_bundle
from fluxframe_render.cli import main as ff_render
from shared.bundle import open_bundle
from shared.errors import UsageError
from shared.spec import FeatureSpec
from tests.media import make_test_video, skimage_images
from tests.pools import decode_bytes, encode_jpeg, hue_shift, make_pool

SPEC = FeatureSpec(method="canny", comparison_size=128)
SPEC_ARGS = ["--method", "canny", "--comparison-size", "128"]
SECOND = 1_000_000_000


def small_pool(folder: Path, n: int, seed: int, *, nested: bool = False) -> list[Path]:
    return make_pool(folder, n, seed, max_side=360, min_side=260, nested=nested)


def options(**kwargs: Any) -> BuildOptions:
    return BuildOptions(spec=kwargs.pop("spec", SPEC), chunk_size=kwargs.pop("chunk_size", 16), **kwargs)


def assert_same_bundle(a: Path, b: Path) -> None:
    """Same vectors and tile data byte for byte, same image table (ids, paths, sizes, mtimes, hashes),
    same rejections."""
    for name in ("vectors.npy", "atlas.npy", "tiles.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ta, tb = pq.read_table(a / "images.parquet"), pq.read_table(b / "images.parquet")
    assert ta.column("path").to_pylist() == tb.column("path").to_pylist()
    assert ta.equals(tb)
    assert pq.read_table(a / "rejected.parquet").equals(pq.read_table(b / "rejected.parquet"))


def invoke(command: Any, *args: str | Path) -> Any:
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


def one_error_line(run: Any, prog: str, code: int) -> str:
    assert run.exit_code == code, (run.exit_code, run.output)
    assert "Traceback" not in run.output
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return str(lines[0])


def rewrite_with_other_content(path: Path) -> None:
    """Same name, other picture (mirrored, hue turned), mtime moved on so no clock tick can hide it."""
    before = path.stat()
    image = decode_bytes(path.read_bytes())
    path.write_bytes(encode_jpeg(hue_shift(np.ascontiguousarray(image[:, ::-1]), 60)))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 5 * SECOND))


def touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 3 * SECOND))


def test_update_extracts_only_new_and_changed_files_and_equals_a_full_rebuild(tmp_path: Path) -> None:
    pool, bundle = tmp_path / "pool", tmp_path / "bundle"
    files = small_pool(pool, 200, seed=1)
    build_bundle(pool, bundle, options())
    old = open_bundle(bundle)
    old_id = old.bundle_id
    old_vectors = np.array(old.vectors)
    old_paths = old.read_images_table(["path"]).column("path").to_pylist()
    del old

    deleted, changed, touched = [files[10], files[150]], [files[40], files[120]], files[77]
    for path in deleted:
        path.unlink()
    for path in changed:
        rewrite_with_other_content(path)
    touch(touched)
    # 10 % new files, named to fall between existing ones so that ids after them shift.
    extra = small_pool(tmp_path / "extra", 20, seed=2)
    for i, path in enumerate(extra):
        shutil.move(path, pool / f"img-{10 * i + 3:05d}b.jpg")

    reports: list[ChunkStats] = []
    result, counts = update_bundle(pool, bundle, options(), on_chunk=reports.append)
    assert counts == UpdateCounts(kept=196, added=20, changed=2, deleted=2)
    assert sum(r.images for r in reports) == 22  # extracted: added + changed, nothing else
    assert result.indexed == 218 and not result.up_to_date
    assert not staging_dir(bundle).exists()

    full = tmp_path / "full"
    build_bundle(pool, full, options(chunk_size=50))
    assert_same_bundle(bundle, full)

    new = open_bundle(bundle)
    assert new.bundle_id != old_id
    assert new.manifest.extra["updated_from"] == old_id
    assert new.manifest.extra["update"] == counts.to_dict()
    # The update's timings cover only what it extracted: the same worker seconds the chunks reported.
    parts = result.timings.extract_parts
    reported = sum(r.read_s + r.decode_s + r.prepare_s + r.feature_s + r.tile_s for r in reports)
    assert sum(parts.values()) == pytest.approx(reported, abs=1e-3) and parts["decode"] > 0
    new_paths = new.read_images_table(["path"]).column("path").to_pylist()

    remap = pq.read_table(bundle / ID_REMAP)
    old_ids = np.asarray(remap.column("old_id").to_pylist(), dtype=np.int64)
    new_ids = np.asarray(remap.column("new_id").to_pylist(), dtype=np.int64)
    assert len(old_ids) == 196 and len(set(old_ids.tolist())) == 196
    assert [old_paths[i] for i in old_ids] == [new_paths[i] for i in new_ids]
    assert np.array_equal(old_vectors[old_ids], np.asarray(new.vectors)[new_ids])
    gone = {files.index(p) for p in deleted + changed}  # sorted files are the old ids
    assert gone.isdisjoint(old_ids.tolist())
    assert files.index(touched) in old_ids.tolist()
    assert not np.array_equal(old_vectors[40], new.vectors[new_paths.index(old_paths[40])])  # really re-extracted

    # The updated bundle is exactly what a build with these options would write: a build says up to date,
    # and so does a second update.
    assert build_bundle(pool, bundle, options()).up_to_date
    again: list[ChunkStats] = []
    result2, counts2 = update_bundle(pool, bundle, options(), on_chunk=again.append)
    assert result2.up_to_date and result2.manifest.bundle_id == new.bundle_id and not again
    assert counts2 == UpdateCounts(kept=218, added=0, changed=0, deleted=0)


def test_update_of_a_touched_file_only_keeps_it(tmp_path: Path) -> None:
    pool, bundle = tmp_path / "pool", tmp_path / "bundle"
    files = small_pool(pool, 12, seed=4)
    build_bundle(pool, bundle, options())
    touch(files[3])
    reports: list[ChunkStats] = []
    _, counts = update_bundle(pool, bundle, options(), on_chunk=reports.append)
    assert counts == UpdateCounts(kept=12, added=0, changed=0, deleted=0)
    assert not reports
    # The new mtime is recorded, so the pool's fingerprint matches and nothing is hashed next time.
    assert_same_bundle(bundle, build_bundle(pool, tmp_path / "full", options()).bundle)
    remap = pq.read_table(bundle / ID_REMAP)
    assert remap.column("old_id").to_pylist() == remap.column("new_id").to_pylist() == list(range(12))


def test_update_of_an_unchanged_pool_with_a_broken_file_keeps_the_bundle(tmp_path: Path) -> None:
    pool, bundle = tmp_path / "pool", tmp_path / "bundle"
    files = small_pool(pool, 8, seed=10)
    (pool / "broken.jpg").write_bytes(files[0].read_bytes()[:300])  # a JPEG cut short: rejected
    first = build_bundle(pool, bundle, options())
    assert [r.path for r in first.rejected] == ["broken.jpg"]
    reports: list[ChunkStats] = []
    result, counts = update_bundle(pool, bundle, options(), on_chunk=reports.append)
    assert result.up_to_date and result.manifest.bundle_id == first.manifest.bundle_id and not reports
    assert counts == UpdateCounts(kept=8, added=0, changed=0, deleted=0)

    shutil.copy(files[1], pool / "copy.jpg")
    result, counts = update_bundle(pool, bundle, options(), on_chunk=reports.append)
    assert counts == UpdateCounts(kept=8, added=1, changed=0, deleted=0, retried=1)
    assert sum(r.images for r in reports) == 2
    assert [r.path for r in result.rejected] == ["broken.jpg"]
    assert_same_bundle(bundle, build_bundle(pool, tmp_path / "full", options()).bundle)


def test_update_refuses_other_feature_options(tmp_path: Path) -> None:
    pool, bundle = tmp_path / "pool", tmp_path / "bundle"
    small_pool(pool, 6, seed=5)
    build_bundle(pool, bundle, options())
    manifest_before = (bundle / "manifest.json").read_bytes()
    run = invoke(ff_index, "build", pool, bundle, "--update", "--method", "canny", "--comparison-size", "64")
    line = one_error_line(run, "ff-index", 2)
    assert "other feature options" in line
    assert (bundle / "manifest.json").read_bytes() == manifest_before
    with pytest.raises(UsageError):
        update_bundle(pool, bundle, options(spec=FeatureSpec(method="hog", comparison_size=128)))


def test_render_after_an_update_matches_again_and_keeps_the_old_matches(tmp_path: Path) -> None:
    pool, bundle, out = tmp_path / "pool", tmp_path / "bundle", tmp_path / "out"
    small_pool(pool, 16, seed=6)
    assert invoke(ff_index, "build", pool, bundle, *SPEC_ARGS, "--jobs", "1", "--quiet").exit_code == 0
    clip = make_test_video(tmp_path / "clip.mp4", skimage_images()[:2], fps=8.0)
    first = invoke(ff_render, clip, bundle, out, "--seed", "1", "--skip-output", "--quiet")
    assert first.exit_code == 0, first.output
    old_id = open_bundle(bundle).bundle_id

    small_pool(pool / "more", 3, seed=7)
    update = invoke(ff_index, "build", pool, bundle, *SPEC_ARGS, "--update", "--jobs", "1", "--quiet")
    assert update.exit_code == 0, update.output
    assert "update: kept 16, added 3, changed 0, deleted 0" in update.stdout
    new_id = open_bundle(bundle).bundle_id
    assert new_id != old_id

    again = invoke(ff_render, clip, bundle, out, "--seed", "1", "--skip-output", "--quiet")
    assert again.exit_code == 0, again.output
    assert f"bundle {old_id[:12]} -> {new_id[:12]}" in again.stderr and "matching again" in again.stderr
    assert len(list((out / ".matches").glob("*.jsonl"))) == 1, "the old bundle's matches are kept"
    assert json.loads((out / "results.json").read_text())["bundle_id"] == new_id


@pytest.fixture(scope="module")
def split_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """parent/a/... and parent/b/deeper/...: two disjoint sub-pools at different depths."""
    parent = tmp_path_factory.mktemp("merge") / "parent"
    small_pool(parent / "a", 14, seed=8, nested=True)
    small_pool(parent / "b" / "deeper", 10, seed=9)
    return parent


def test_merge_of_disjoint_sub_pools_equals_a_single_build(split_pool: Path, tmp_path: Path) -> None:
    a, b, single = tmp_path / "A", tmp_path / "B", tmp_path / "single"
    build_bundle(split_pool / "a", a, options(chunk_size=4))
    build_bundle(split_pool / "b" / "deeper", b, options(chunk_size=7))
    build_bundle(split_pool, single, options())

    run = invoke(ff_index, "merge", a, b, tmp_path / "AB", "--quiet")
    assert run.exit_code == 0, run.output
    assert "indexed 24 images" in run.stdout
    assert_same_bundle(tmp_path / "AB", single)
    merged = open_bundle(tmp_path / "AB")
    assert merged.pool_root == split_pool.resolve()
    assert merged.manifest.extra["merged_from"] == [open_bundle(a).bundle_id, open_bundle(b).bundle_id]
    # A merge reads its rows from the inputs: the pipeline extracted nothing.
    stages = merge_bundles([a, b], tmp_path / "AB2").timings.stages
    assert stages["extract"].busy_s == 0 and stages["write"].busy_s > 0

    # Input order does not matter.
    merge_bundles([b, a], tmp_path / "BA")
    assert_same_bundle(tmp_path / "BA", single)


def test_merge_refuses_other_feature_options_and_overlapping_pools(split_pool: Path, tmp_path: Path) -> None:
    a, b_other, parent = tmp_path / "A", tmp_path / "B64", tmp_path / "parent"
    build_bundle(split_pool / "a", a, options())
    build_bundle(split_pool / "b" / "deeper", b_other, options(spec=FeatureSpec(method="canny", comparison_size=64)))
    build_bundle(split_pool, parent, options())

    line = one_error_line(invoke(ff_index, "merge", a, b_other, tmp_path / "out"), "ff-index", 2)
    assert "other feature options" in line and str(b_other) in line
    line = one_error_line(invoke(ff_index, "merge", a, parent, tmp_path / "out"), "ff-index", 2)
    assert "the pools overlap" in line and "a/" in line
    line = one_error_line(invoke(ff_index, "merge", a, a, tmp_path / "out"), "ff-index", 2)
    assert "the pools overlap" in line
    assert not (tmp_path / "out").exists() and not staging_dir(tmp_path / "out").exists()
