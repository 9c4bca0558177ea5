"""Incremental and distributed build figures: what --update saves, what Dask costs on one machine.

``run(out_dir, pool_dir)`` works on a mirror of the pool made of symbolic links (the
cached pool itself is never modified), so 1 % of its files can be replaced by new
content without touching the original:

- a full loky build (--jobs = cores) of the mirror, then the same build on a Dask
  LocalCluster of as many single-threaded worker processes (cluster start-up timed
  apart); both bundles must be byte-identical;
- 1 % of the files re-encoded with other content, then ``update_bundle``: its time
  as a share of the full build's (target < 5 %), and the count of images it extracted.

Rows are dicts with the fields of ``tests.bench.common.Row`` (group, name, setting,
value, unit, target, met, note).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from fluxframe_index.build import BuildOptions, BuildResult, build_bundle, staging_dir
from fluxframe_index.distributed import dask_backend
from fluxframe_index.extract import ChunkStats
from fluxframe_index.scan import scan_pool
from fluxframe_index.update import update_bundle
from shared.spec import FeatureSpec

GROUP = "distributed"
CHANGED_SHARE = 0.01
UPDATE_TARGET = 0.05  # an update of a 1 % change costs under 5 % of a full build


def mirror_pool(pool: Path, dest: Path) -> list[Path]:
    """A fresh tree of symbolic links to every pool file; returns the links in scan order."""
    shutil.rmtree(dest, ignore_errors=True)
    scan = scan_pool(pool)
    links = []
    for entry in scan.entries:
        link = dest / entry.path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(scan.root / entry.path)
        links.append(link)
    return links


def warm(paths: list[Path]) -> int:
    """Read every file once, so builds measure decoding and features, not the disk."""
    return sum(len(p.read_bytes()) for p in paths)


def change_content(paths: list[Path]) -> None:
    """Replace each link by a real file holding other content (mirrored, recompressed)."""
    for path in paths:
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise RuntimeError(f"cannot decode {path}")
        ok, buffer = cv2.imencode(".jpg", np.ascontiguousarray(image[:, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 88])
        if not ok:
            raise RuntimeError(f"cannot re-encode {path}")
        path.unlink()
        path.write_bytes(buffer.tobytes())


def _fresh(dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(staging_dir(dest.absolute()), ignore_errors=True)
    return dest


def _row(name: str, setting: str, value: float | None, unit: str, **extra: object) -> dict[str, object]:
    return {"group": GROUP, "name": name, "setting": setting, "value": value, "unit": unit, **extra}


def run(
    out_dir: Path, pool_dir: Path, *, method: str = "canny", jobs: int | None = None, keep: bool = False
) -> list[dict[str, object]]:
    """Measure --update of a 1 % change against a full build, and Dask against loky, on ``pool_dir``."""
    jobs = jobs or os.cpu_count() or 1
    work = Path(out_dir) / "dist-work"
    work.mkdir(parents=True, exist_ok=True)
    links = mirror_pool(Path(pool_dir), work / "pool")
    pool = work / "pool"
    warm(links)
    n = len(links)
    options = BuildOptions(spec=FeatureSpec(method=method), jobs=jobs)
    where = f"{n:,} JPEGs, {method}"
    rows: list[dict[str, object]] = []

    loky = build_bundle(pool, _fresh(work / "loky"), options)
    rows.append(_row("full build, loky", f"{where}, --jobs {jobs}", n / loky.seconds, "img/s", note=_secs(loky)))

    started = time.perf_counter()
    with dask_backend(None, jobs):
        cluster_s = time.perf_counter() - started
        dask = build_bundle(pool, _fresh(work / "dask"), BuildOptions(spec=options.spec, jobs=jobs, backend="dask"))
    same = (work / "loky" / "vectors.npy").read_bytes() == (work / "dask" / "vectors.npy").read_bytes()
    rows.append(
        _row(
            "full build, Dask LocalCluster",
            f"{where}, {jobs} worker processes",
            n / dask.seconds,
            "img/s",
            note=f"{_secs(dask)}; cluster start {cluster_s:.1f} s apart; vectors {'identical' if same else 'DIFFER'}",
        )
    )
    rows.append(_row("Dask / loky throughput", where, loky.seconds / dask.seconds, "x"))
    shutil.rmtree(work / "dask", ignore_errors=True)

    step = max(1, round(1 / CHANGED_SHARE))
    changed = links[step // 2 :: step]
    change_content(changed)
    extracted: list[ChunkStats] = []
    result, counts = update_bundle(pool, work / "loky", options, on_chunk=extracted.append)
    share = result.seconds / loky.seconds
    images = sum(s.images for s in extracted)
    rows.append(
        _row(
            "update of a 1 % change / full build",
            f"{where}, {len(changed)} files changed, --jobs {jobs}",
            100 * share,
            "%",
            target=f"< {100 * UPDATE_TARGET:g}",
            met=share < UPDATE_TARGET and counts.changed == len(changed) and images == len(changed),
            note=f"update {result.seconds:.2f} s vs full {loky.seconds:.1f} s; extracted {images}, "
            f"kept {counts.kept}, changed {counts.changed}",
        )
    )
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _secs(result: BuildResult) -> str:
    return f"{result.indexed:,} images in {result.seconds:.1f} s"


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2])), indent=2))
