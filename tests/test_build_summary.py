"""The bundle's build summary: stage timings beside the sealed files, never part of what is sealed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_index.merge import merge_bundles
from fluxframe_index.summary import read_build_summary
from fluxframe_index.timings import STAGES
from fluxframe_index.update import update_bundle
from shared.bundle import BUILD_SUMMARY, Manifest, open_bundle, read_manifest
from shared.spec import FeatureSpec
from tests.pools import make_pool

SPEC = FeatureSpec(method="canny", comparison_size=128)


def options(jobs: int = 1) -> BuildOptions:
    return BuildOptions(spec=SPEC, jobs=jobs, chunk_size=5)


def sealed_bytes(bundle: Path) -> dict[str, bytes]:
    """Every file the manifest lists, byte for byte (the manifest itself holds created_at)."""
    return {name: (bundle / name).read_bytes() for name in read_manifest(bundle).files}


def summary_of(bundle: Path, manifest: Manifest) -> dict[str, Any]:
    summary = read_build_summary(bundle, manifest)
    assert summary is not None, f"{bundle}: no build summary of bundle {manifest.bundle_id}"
    return summary


def assert_timed(summary: dict[str, Any], extracted: int) -> None:
    timings = summary["timings"]
    assert set(timings["stages"]) == set(STAGES)
    for stage in timings["stages"].values():
        assert stage["busy_s"] >= 0 and stage["waiting_s"] >= 0
    assert timings["images_extracted"] == extracted
    assert timings["wall_s"] > 0
    # Extraction is timed part by part whenever something was extracted.
    assert (sum(timings["extract_parts_s"].values()) > 0) == (extracted > 0)


def test_two_builds_seal_the_same_bytes_and_each_leaves_its_timings_beside_them(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, 12, seed=3, max_side=400, nested=True)
    one, two = tmp_path / "one", tmp_path / "two"
    first = build_bundle(pool, one, options(jobs=1))
    second = build_bundle(pool, two, options(jobs=2))

    assert BUILD_SUMMARY not in first.manifest.files
    assert sealed_bytes(one) == sealed_bytes(two)
    for bundle, result in ((one, first), (two, second)):
        summary = summary_of(bundle, result.manifest)
        assert (summary["kind"], summary["images"], summary["rejected"]) == ("build", 12, 0)
        assert summary["timings"]["jobs"] == result.timings.jobs
        assert_timed(summary, extracted=12)
        assert summary["timings"]["stages"]["extract"]["busy_s"] > 0
    open_bundle(one, verify=True)  # the summary beside the sealed files does not trouble verify


def test_update_and_merge_write_their_own_summary_and_an_old_one_is_not_trusted(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool / "a", 8, seed=4, max_side=400)
    make_pool(pool / "b", 6, seed=5, max_side=400)
    bundle = tmp_path / "bundle"
    built = build_bundle(pool / "a", bundle, options())
    stale = (bundle / BUILD_SUMMARY).read_bytes()

    extra = tmp_path / "extra"
    make_pool(extra, 1, seed=6, max_side=400)
    shutil.move(next(extra.iterdir()), pool / "a" / "new.jpg")
    updated, _counts = update_bundle(pool / "a", bundle, options())
    summary = summary_of(bundle, updated.manifest)
    assert (summary["kind"], summary["images"]) == ("update", 9)
    assert_timed(summary, extracted=1)  # only the new file was decoded
    # A summary left by an earlier run (a kill between the swap and the summary) names another bundle.
    (bundle / BUILD_SUMMARY).write_bytes(stale)
    assert built.manifest.bundle_id != updated.manifest.bundle_id
    assert read_build_summary(bundle, updated.manifest) is None

    other = tmp_path / "other"
    build_bundle(pool / "b", other, options())
    merged = merge_bundles([bundle, other], tmp_path / "merged")
    summary = summary_of(tmp_path / "merged", merged.manifest)
    assert (summary["kind"], summary["images"]) == ("merge", 15)
    assert_timed(summary, extracted=0)  # a merge reads its rows from its inputs
