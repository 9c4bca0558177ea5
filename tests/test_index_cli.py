"""ff-index as a user meets it: build with a corrupt file, info, verify, methods, and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_index.cli import main
from fluxframe_index.extract import ChunkStats
from shared.bundle import VECTORS, open_bundle
from shared.errors import EXIT_BUNDLE, EXIT_INPUT, EXIT_STATE, EXIT_USAGE
from shared.spec import FeatureSpec
from tests.pools import copy_tree, make_pool


def ff_index(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="ff-index")


def one_error_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert lines[0].startswith("ff-index: error: ")
    return lines[0]


def test_build_reports_a_corrupt_file_and_succeeds(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    last = make_pool(pool, 10, seed=4, max_side=640)[-1]
    whole = last.read_bytes()
    last.unlink()
    (pool / "broken.jpg").write_bytes(whole[: len(whole) // 2])  # cut off mid-scan, as a failed copy leaves it
    script = Path(sys.executable).with_name("ff-index")  # the installed console script, as users run it
    command = [str(script)] if script.exists() else [sys.executable, "-c", "import fluxframe_index.cli as c; c.main()"]
    run = subprocess.run(
        [*command, "build", str(pool), str(tmp_path / "bundle"), "--jobs", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "rejected: broken.jpg: truncated:" in run.stderr
    assert "indexed 9 images, rejected 1," in run.stdout
    rejected = pq.read_table(tmp_path / "bundle" / "rejected.parquet").to_pylist()
    assert [(r["path"], r["reason"]) for r in rejected] == [("broken.jpg", "truncated")]
    assert open_bundle(tmp_path / "bundle").count == 9


def test_a_second_build_says_it_has_nothing_to_do(small_pool: Path, tmp_path: Path) -> None:
    first = ff_index("build", str(small_pool), str(tmp_path / "b"), "--jobs", "1", "--quiet", "--method", "hog")
    assert first.exit_code == 0, first.output
    assert "indexed 12 images, rejected 0, 1652-d hog, flat index" in first.stdout
    again = ff_index("build", str(small_pool), str(tmp_path / "b"), "--jobs", "1", "--quiet", "--method", "hog")
    assert again.exit_code == 0
    assert "up to date (12 images, hog" in again.stdout and "nothing to do" in again.stdout
    other = ff_index("build", str(small_pool), str(tmp_path / "b"), "--jobs", "1", "--quiet", "--method", "canny")
    assert other.exit_code == EXIT_STATE and "--replace" in other.stderr  # another spec: only on request
    other = ff_index(
        "build", str(small_pool), str(tmp_path / "b"), "--jobs", "1", "--quiet", "--method", "canny", "--replace"
    )
    assert other.exit_code == 0 and "indexed 12 images" in other.stdout


def test_build_timings_print_busy_and_waiting_seconds_per_stage(small_pool: Path, tmp_path: Path) -> None:
    run = ff_index("build", str(small_pool), str(tmp_path / "b"), "--jobs", "1", "--quiet", "--timings")
    assert run.exit_code == 0, run.output
    table = run.stdout.splitlines()
    rows = {words[0]: [float(w) for w in words[1:]] for words in map(str.split, table) if len(words) == 3}
    assert set(rows) == {"scan", "extract", "write", "seal"} and all(v >= 0 for r in rows.values() for v in r)
    # Twelve real photos were decoded and described: both took measurable worker time.
    split = next(line for line in table if line.startswith("worker seconds in extract"))
    assert re.search(r"decode [0-9.]+ s \(\d+%\)", split) and re.search(r"features [0-9.]+ s", split)
    assert rows["extract"][0] > 0 and rows["write"][0] > 0
    again = ff_index("build", str(small_pool), str(tmp_path / "b"), "--jobs", "1", "--quiet")
    assert "busy s" not in again.stdout


def test_build_result_timings_add_up_the_chunks(small_pool: Path, tmp_path: Path) -> None:
    reports: list[ChunkStats] = []
    options = BuildOptions(spec=FeatureSpec(method="canny"), chunk_size=5)
    result = build_bundle(small_pool, tmp_path / "b", options, on_chunk=reports.append)
    recorded = result.timings.to_dict()
    assert set(recorded["stages"]) == {"scan", "extract", "write", "seal"}
    parts = recorded["extract_parts_s"]
    assert parts["decode"] > 0 and parts["features"] > 0
    worker = sum(r.read_s + r.decode_s + r.prepare_s + r.feature_s + r.tile_s for r in reports)
    assert recorded["stages"]["extract"]["busy_s"] == pytest.approx(worker, abs=1e-3)
    # Decoding and preparing are timed apart; the flat summary keeps them together, as it always did.
    assert parts["prepare"] > 0
    assert result.stage_seconds["decode"] == pytest.approx(sum(r.decode_s + r.prepare_s for r in reports))


def test_info_describes_the_bundle(small_bundle: Path) -> None:
    result = ff_index("info", str(small_bundle))
    assert result.exit_code == 0, result.output
    manifest = open_bundle(small_bundle).manifest
    text = result.stdout
    assert f"bundle_id   {manifest.bundle_id}" in text
    assert "method      spatial_color" in text
    assert "vectors     12 x 256 float32  (blocks: edge 16, texture 16, color 224)" in text
    assert "index       flat" in text
    assert "rejected    0 files" in text
    assert f"pool        {manifest.pool_root}" in text


def test_info_json_is_the_manifest(small_bundle: Path) -> None:
    result = ff_index("info", "--json", str(small_bundle))
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == open_bundle(small_bundle).manifest.to_dict()
    assert data["spec"]["method"] == "spatial_color" and data["count"] == 12 and data["dim"] == 256


def test_verify_ok_and_tampered(small_bundle: Path, tmp_path: Path) -> None:
    ok = ff_index("verify", str(small_bundle))
    assert ok.exit_code == 0 and ok.stdout.startswith(f"{small_bundle}: OK (")
    bundle = copy_tree(small_bundle, tmp_path / "bundle")
    data = bytearray((bundle / VECTORS).read_bytes())
    data[-3] ^= 0x40
    (bundle / VECTORS).write_bytes(bytes(data))
    bad = ff_index("verify", str(bundle))
    assert bad.exit_code == EXIT_BUNDLE
    assert str(bundle / VECTORS) in one_error_line(bad)
    # info reads only the manifest: it still works, verify is what checks content.
    assert ff_index("info", str(bundle)).exit_code == 0


def test_methods_lists_every_classic_method_ready_with_its_dims() -> None:
    result = ff_index("methods")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith(" ")}
    assert "376D (at 256 px, 16:9)" in lines["canny"] and lines["canny"].endswith("ready")
    assert "1088D (2x2) / 2448D (3x3)" in lines["spatial_pyramid"] and lines["spatial_pyramid"].endswith("ready")
    assert "1652D (at 256 px, 16:9)" in lines["hog"] and lines["hog"].endswith("ready")
    assert "256D (at 256 px, 16:9)" in lines["spatial_color"] and lines["spatial_color"].endswith("ready")
    assert {"mobilenet", "efficientnet"} <= set(lines)


@pytest.mark.parametrize(
    ("case", "code", "fragment"),
    [
        ("missing pool", EXIT_INPUT, "pool folder does not exist"),
        ("pool is a file", EXIT_INPUT, "pool is not a folder"),
        ("aspect garbage", EXIT_USAGE, "aspect must look like W:H"),
        ("aspect zero", EXIT_USAGE, "aspect must be positive"),
        ("comparison size 5", EXIT_USAGE, "'--comparison-size': 5 is not in the range"),
        ("unknown method", EXIT_USAGE, "'--method'"),
        ("bundle is a file", EXIT_USAGE, "exists and is not a folder"),
        ("empty pool", EXIT_INPUT, "no image files found"),
        ("info of no bundle", EXIT_BUNDLE, "no such bundle"),
        ("verify of a folder", EXIT_BUNDLE, "not a FluxFrame bundle"),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    case: str, code: int, fragment: str, small_pool: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "file.jpg"
    a_file.write_bytes(b"not a folder")
    (tmp_path / "empty").mkdir()
    out = str(tmp_path / "bundle")
    pool = str(small_pool)
    args = {
        "missing pool": ["build", str(tmp_path / "nope"), out],
        "pool is a file": ["build", str(a_file), out],
        "aspect garbage": ["build", pool, out, "--aspect", "wide"],
        "aspect zero": ["build", pool, out, "--aspect", "0:9"],
        "comparison size 5": ["build", pool, out, "--comparison-size", "5"],
        "unknown method": ["build", pool, out, "--method", "sift"],
        "bundle is a file": ["build", pool, str(a_file), "--jobs", "1"],
        "empty pool": ["build", str(tmp_path / "empty"), out],
        "info of no bundle": ["info", str(tmp_path / "nope")],
        "verify of a folder": ["verify", str(tmp_path / "empty")],
    }[case]
    result = ff_index(*args)
    assert result.exit_code == code, result.output
    assert fragment in one_error_line(result)
    assert not (tmp_path / "bundle").exists()
