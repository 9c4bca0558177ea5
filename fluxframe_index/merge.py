"""ff-index merge A B OUT: one bundle from bundles built with the same spec over disjoint pools.

The merged pool root is the deepest folder holding both pools; paths are
re-rooted there and sorted, so the result equals a single build over the union.
A merge is a source of the one index pipeline that extracts nothing: its rows
come from the input bundles.
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

from fluxframe_index.assemble import RowRun, sort_key
from fluxframe_index.build import BuildResult, bundle_lock
from fluxframe_index.extract import ChunkTask
from fluxframe_index.pipeline import Rows, RunSettings, run_source
from fluxframe_index.scan import ScanRejection
from fluxframe_index.seal import BundleDescription, BundleRequest
from fluxframe_index.timings import BuildTimings
from shared.bundle import ATLAS, IMAGE_COLUMNS, IMAGES, INDEX, REJECTED, TILE_INDEX, TILES, VECTORS, Bundle, open_bundle
from shared.errors import UsageError
from shared.hashing import sha256_json

RUN_ROWS = 4096
# Files with one row per image: assembled from the inputs' rows, never copied from one input.
ROW_FILES = (VECTORS, ATLAS, TILES, TILE_INDEX)
# Files a merge writes anew (or drops: an update's remap); every other file is an asset, copied from the first input.
NOT_ASSETS = (*ROW_FILES, INDEX, REJECTED, IMAGES, "id_remap.parquet")


def _prefix(root: Path, common: Path) -> str:
    rel = os.path.relpath(root, common)
    return "" if rel == "." else PurePosixPath(*Path(rel).parts).as_posix() + "/"


def merge_bundles(
    inputs: list[Path], dest: Path, *, index_kind: str = "flat", ivf_nlist: int | None = None, progress: bool = False
) -> BuildResult:
    """Merge bundles of one spec over disjoint pools into ``dest``."""
    started = time.perf_counter()
    timings = BuildTimings()
    dest = Path(dest).absolute()
    with bundle_lock(dest):
        if len(inputs) < 2:
            raise UsageError("merge needs at least two bundles")
        with timings.busy("scan"):
            source = MergeSource([open_bundle(p, verify=True) for p in inputs], index_kind, ivf_nlist)
        sealed = run_source(source, dest, RunSettings(progress=progress), timings)
    seconds = time.perf_counter() - started
    return BuildResult(dest, sealed.manifest, False, sealed.count, sealed.rejected, 0, seconds, timings=timings)


class MergeSource:
    """The input bundles' rows, re-rooted at their pools' common folder and sorted by path."""

    kind = "merge"

    def __init__(self, bundles: list[Bundle], index_kind: str, ivf_nlist: int | None) -> None:
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
        self.bundles = bundles
        roots = [b.pool_root for b in bundles]
        self.common = Path(os.path.commonpath([str(r) for r in roots]))
        self.prefixes = [_prefix(r, self.common) for r in roots]
        self.entries: list[tuple[bytes, int, int]] = []  # (sort key, bundle index, row)
        self.tables: list[pa.Table] = []
        for bi, (b, prefix) in enumerate(zip(bundles, self.prefixes, strict=True)):
            table = b.read_images_table()
            self.tables.append(table)
            for row, raw in enumerate(table.column("raw_path").to_pylist()):
                self.entries.append((os.fsencode(prefix) + raw, bi, row))
        self.entries.sort()
        for (a, _, _), (b_, _, _) in itertools.pairwise(self.entries):
            if a == b_:
                raise UsageError(f"the pools overlap: {os.fsdecode(a)} is in more than one bundle")
        # Tile data survives a merge when every input has the same kind; otherwise `--update` adds it later.
        same_tiles = all(b.manifest.tiles == first.manifest.tiles for b in bundles)
        tiles = first.manifest.tiles if same_tiles else None
        self.request = BundleRequest(limit=None, index_kind=index_kind, ivf_nlist=ivf_nlist, tiles=tiles)

    def plan(self) -> dict[str, Any]:
        return {"merge_of": [b.bundle_id for b in self.bundles], "request": self.request.to_dict()}

    def prepare_assets(self, asset_dir: Path) -> None:
        first = self.bundles[0]
        for name in first.manifest.files:
            if name not in NOT_ASSETS:
                shutil.copy2(first.path / name, asset_dir / name)

    def tasks(self, asset_dir: Path, shard_dir: Path) -> list[ChunkTask]:
        return []  # nothing to extract: every row comes from an input bundle

    def describe(self, asset_dir: Path) -> BundleDescription:
        first = self.bundles[0]
        return BundleDescription(
            spec=first.spec,
            blocks=first.manifest.blocks,
            pool_root=self.common,
            pool_fingerprint=sha256_json(sorted(b.manifest.pool_fingerprint for b in self.bundles)),
            request=self.request,
            extra={"merged_from": [b.bundle_id for b in self.bundles]},
        )

    def nothing_usable(self, rejected: list[ScanRejection]) -> str:
        return "the bundles to merge hold no images"

    def rows(self, shard_dir: Path, dim: int) -> Rows:
        rejected: list[ScanRejection] = []
        for b, prefix in zip(self.bundles, self.prefixes, strict=True):
            rej = b.read_rejected_table()
            rejected.extend(
                ScanRejection(prefix + p, r, d)
                for p, r, d in zip(*(rej.column(c).to_pylist() for c in ("path", "reason", "detail")), strict=True)
            )
        rejected.sort(key=lambda r: sort_key(r.path))
        with_tiles = self.request.tiles is not None

        def runs() -> Iterator[RowRun]:
            for start in range(0, len(self.entries), RUN_ROWS):
                block = self.entries[start : start + RUN_ROWS]
                yield _run(block, self.bundles, self.tables, self.prefixes, dim, with_tiles)

        return Rows(len(self.entries), runs(), rejected)


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
