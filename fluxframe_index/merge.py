"""ff-index merge A B OUT: one bundle from bundles built with the same spec over disjoint pools.

The merged pool root is the deepest folder holding both pools; paths are
re-rooted there and sorted, so the result equals a single build over the union.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from fluxframe_index.assemble import RowRun, sort_key, write_rejected, write_rows
from fluxframe_index.build import BuildResult, build_tile_ivf, bundle_lock, discard_staging, staging_dir
from fluxframe_index.ivf import build_ivf_index
from fluxframe_index.scan import ScanRejection
from shared.bundle import (
    ATLAS,
    IMAGE_COLUMNS,
    INDEX,
    REJECTED,
    TILE_INDEX,
    TILES,
    VECTORS,
    Bundle,
    IndexInfo,
    finalize_bundle,
    open_bundle,
)
from shared.errors import UsageError
from shared.hashing import sha256_json

RUN_ROWS = 4096
# Files with one row per image: assembled from the inputs' rows, never copied from one input.
ROW_FILES = (VECTORS, ATLAS, TILES, TILE_INDEX)


def _prefix(root: Path, common: Path) -> str:
    rel = os.path.relpath(root, common)
    return "" if rel == "." else PurePosixPath(*Path(rel).parts).as_posix() + "/"


def merge_bundles(
    inputs: list[Path], dest: Path, *, index_kind: str = "flat", ivf_nlist: int | None = None, progress: bool = False
) -> BuildResult:
    """Merge bundles of one spec over disjoint pools into ``dest``."""
    with bundle_lock(dest):
        return _merge_bundles(inputs, Path(dest).absolute(), index_kind, ivf_nlist, progress)


def _merge_bundles(
    inputs: list[Path], dest: Path, index_kind: str, ivf_nlist: int | None, progress: bool
) -> BuildResult:
    started = time.perf_counter()
    if len(inputs) < 2:
        raise UsageError("merge needs at least two bundles")
    bundles = [open_bundle(p, verify=True) for p in inputs]
    first = bundles[0]
    for other in bundles[1:]:
        if other.manifest.spec_sha256 != first.manifest.spec_sha256:
            raise UsageError(f"{other.path}: built with other feature options than {first.path}; cannot merge")
        for name in first.manifest.files:
            if (
                name.endswith((".npy", ".onnx"))
                and name not in ROW_FILES
                and name in other.manifest.files
                and other.manifest.files[name]["sha256"] != first.manifest.files[name]["sha256"]
            ):
                raise UsageError(f"{other.path}: its {name} differs from {first.path}'s; cannot merge")
    roots = [b.pool_root for b in bundles]
    common = Path(os.path.commonpath([str(r) for r in roots]))
    prefixes = [_prefix(r, common) for r in roots]

    entries: list[tuple[bytes, int, int]] = []  # (sort key, bundle index, row)
    tables = []
    for bi, (b, prefix) in enumerate(zip(bundles, prefixes, strict=True)):
        table = b.read_images_table()
        tables.append(table)
        for row, raw in enumerate(table.column("raw_path").to_pylist()):
            entries.append((os.fsencode(prefix) + raw, bi, row))
    entries.sort()
    for (a, _, _), (b_, _, _) in itertools.pairwise(entries):
        if a == b_:
            raise UsageError(f"the pools overlap: {os.fsdecode(a)} is in more than one bundle")

    dest = Path(dest).absolute()
    stage = staging_dir(dest)
    if stage.exists():
        shutil.rmtree(stage)
    work = stage / "bundle"
    work.mkdir(parents=True)
    for name in first.manifest.files:
        if name not in (*ROW_FILES, INDEX, REJECTED, "images.parquet", "id_remap.parquet"):
            shutil.copy2(first.path / name, work / name)
    dim = first.manifest.dim
    # Tile data survives a merge when every input has the same kind; otherwise `--update` adds it later.
    tiles = first.manifest.tiles if all(b.manifest.tiles == first.manifest.tiles for b in bundles) else None

    def runs() -> Iterator[RowRun]:
        for start in range(0, len(entries), RUN_ROWS):
            block = entries[start : start + RUN_ROWS]
            yield _run(block, bundles, tables, prefixes, dim, tiles is not None)

    count = write_rows(work, dim, len(entries), runs(), tiles)
    rejected: list[ScanRejection] = []
    for b, prefix in zip(bundles, prefixes, strict=True):
        rej = b.read_rejected_table()
        rejected.extend(
            ScanRejection(prefix + p, r, d)
            for p, r, d in zip(*(rej.column(c).to_pylist() for c in ("path", "reason", "detail")), strict=True)
        )
    rejected.sort(key=lambda r: sort_key(r.path))
    write_rejected(work / REJECTED, rejected)
    index_info = IndexInfo()
    if index_kind == "ivf":
        index_info = build_ivf_index(work / VECTORS, work / INDEX, nlist=ivf_nlist, progress=progress)
        if tiles is not None:
            build_tile_ivf(work, progress)
    manifest = finalize_bundle(
        work,
        dest,
        tiles=tiles,
        spec=first.spec,
        blocks=first.manifest.blocks,
        pool_root=common,
        pool_fingerprint=sha256_json(sorted(b.manifest.pool_fingerprint for b in bundles)),
        count=count,
        rejected_count=len(rejected),
        dim=dim,
        index=index_info,
        extra={
            "request": {
                "limit": None,
                "index": index_kind,
                "ivf_nlist": ivf_nlist,
                "tiles": tiles.to_dict() if tiles is not None else None,
            },
            "merged_from": [b.bundle_id for b in bundles],
        },
    )
    discard_staging(stage)
    return BuildResult(dest, manifest, False, count, rejected, 0, time.perf_counter() - started)


def _run(
    block: list[tuple[bytes, int, int]],
    bundles: list[Bundle],
    tables: list[pa.Table],
    prefixes: list[str],
    dim: int,
    with_tiles: bool,
) -> RowRun:
    vectors = np.empty((len(block), dim), dtype=np.float32)
    atlas = np.stack([bundles[bi].atlas[row] for _, bi, row in block]) if with_tiles else None
    tiles = np.stack([bundles[bi].tile_descriptors[row] for _, bi, row in block]) if with_tiles else None
    columns: dict[str, list[Any]] = {name: [] for name in IMAGE_COLUMNS}
    for i, (key, bi, row) in enumerate(block):
        vectors[i] = bundles[bi].vectors[row]
        for name in IMAGE_COLUMNS:
            value = tables[bi].column(name)[row].as_py()
            if name == "raw_path":
                value = key
            elif name == "path":
                value = prefixes[bi] + value
            columns[name].append(value)
    return RowRun(vectors, columns, atlas, tiles)
