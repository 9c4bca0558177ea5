"""ff-index build --update: re-extract only what changed in the pool, keep the rest.

An update is a source of the one index pipeline (fluxframe_index.pipeline): its tasks are
the changed files, its rows the kept ones from the old bundle and the fresh ones from the shards.

Files with the same size and mtime are kept; a file whose mtime changed but whose
size and sha256 did not is kept too (a touch or a copy). New and changed files
are extracted, and files the old bundle rejected are tried again; deleted ones
are dropped. Ids follow sorted paths exactly as a full build would, so an update
gives the same bundle a full rebuild gives; old ids map to new ones through
id_remap.parquet. A pool unchanged since the bundle was written leaves it as it is.

Tile data of kept files is copied from the old bundle; a bundle without it (written
before tile mode, or with another tile size) gets it by decoding the kept files once
for their tiles only: their features are kept, not recomputed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from fluxframe_index.assemble import RowRun, sort_key
from fluxframe_index.build import (
    BuildOptions,
    BuildResult,
    bundle_lock,
    is_up_to_date,
    refuse_bundle_inside_pool,
)
from fluxframe_index.extract import ChunkStats, ChunkTask
from fluxframe_index.pipeline import Rows, run_source
from fluxframe_index.scan import PoolEntry, ScanRejection, ScanResult, describe_unusable, scan_pool
from fluxframe_index.seal import BundleDescription
from fluxframe_index.shards import read_meta, read_shard, read_tile_shard, shard_rejections
from fluxframe_index.timings import BuildTimings
from shared.bundle import IMAGE_COLUMNS, Bundle, display_path, open_bundle
from shared.errors import BundleError, UsageError
from shared.features.registry import method_info
from shared.hashing import sha256_json
from shared.tiles import TileSpec

ID_REMAP = "id_remap.parquet"
ID_REMAP_SCHEMA = pa.schema([("old_id", pa.int64()), ("new_id", pa.int64())])
# Rows of the new bundle assembled at a time (kept rows gathered from the old bundle's mapped files).
RUN_ROWS = 4096


@dataclass(frozen=True)
class UpdateCounts:
    kept: int
    added: int
    changed: int
    deleted: int
    retried: int = 0  # files the old bundle rejected, tried again (they may have been fixed)

    def to_dict(self) -> dict[str, int]:
        return {
            "kept": self.kept,
            "added": self.added,
            "changed": self.changed,
            "deleted": self.deleted,
            "retried": self.retried,
        }


def _same_content(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


@dataclass(frozen=True)
class PoolChanges:
    """How the pool differs from the bundle: which old rows are kept, which files need extracting."""

    keep: dict[str, int]  # path -> old id
    todo: list[PoolEntry]  # new, changed and formerly rejected files, in scan order
    counts: UpdateCounts


def update_bundle(
    pool: Path,
    bundle: Path,
    options: BuildOptions,
    *,
    on_chunk: Callable[[ChunkStats], None] | None = None,
) -> tuple[BuildResult, UpdateCounts]:
    """Bring ``bundle`` up to date with ``pool``, extracting only new and changed files."""
    refuse_bundle_inside_pool(pool, bundle)
    bundle = Path(bundle).absolute()
    started = time.perf_counter()
    timings = BuildTimings(jobs=options.jobs)
    with bundle_lock(bundle):
        old = open_bundle(bundle, verify=False)
        spec = options.spec.canonical()
        if old.manifest.spec_sha256 != spec.sha256():
            raise UsageError(
                f"{bundle}: was built with other feature options ({old.spec.method}); an update keeps them — "
                "drop --update and add --replace for a full rebuild with the new options"
            )
        with timings.busy("scan"):
            scan = scan_pool(pool, limit=options.limit)
        if is_up_to_date(old.manifest, spec, scan.fingerprint(), options, pool_root=scan.root):
            # Same paths, sizes and mtimes as when the bundle was written: files it rejected then
            # would be rejected again, and a new bundle_id would void render checkpoints for nothing.
            counts = UpdateCounts(kept=old.count, added=0, changed=0, deleted=0)
            seconds = time.perf_counter() - started
            return BuildResult(bundle, old.manifest, True, old.count, [], 0, seconds, timings=timings), counts
        with timings.busy("scan"):
            changes = pool_changes(old, scan)
        source = UpdateSource(pool, old, scan, changes, options)
        sealed = run_source(source, bundle, options.run_settings(), timings, on_chunk)
    return BuildResult.sealed(bundle, sealed, started, scan, timings), changes.counts


def pool_changes(old: Bundle, scan: ScanResult) -> PoolChanges:
    """Kept files (same size, and same mtime or same sha256), and the files to extract."""
    old_rejected = set(old.read_rejected_table().column("path").to_pylist())
    old_table = old.read_images_table(["raw_path", "bytes", "mtime_ns", "sha256"])
    old_rows = {
        os.fsdecode(raw): (i, size, mtime, digest)
        for i, (raw, size, mtime, digest) in enumerate(
            zip(*(old_table.column(c).to_pylist() for c in ("raw_path", "bytes", "mtime_ns", "sha256")), strict=True)
        )
    }
    keep: dict[str, int] = {}
    todo: list[PoolEntry] = []
    changed = retried = 0
    for entry in scan.entries:
        previous = old_rows.get(entry.path)
        if previous is not None:
            old_id, size, mtime, digest = previous
            if size == entry.size and (mtime == entry.mtime_ns or _same_content(scan.root / entry.path, digest)):
                keep[entry.path] = old_id
                continue
            changed += 1
        elif display_path(entry.path) in old_rejected:
            retried += 1
        todo.append(entry)
    seen = {e.path for e in scan.entries}
    deleted = sum(1 for p in old_rows if p not in seen)
    return PoolChanges(keep, todo, UpdateCounts(len(keep), len(todo) - changed - retried, changed, deleted, retried))


class UpdateSource:
    """An update's changed files (plus, for a bundle without this tile data, its kept files' tiles only);
    the rows are the kept ones from the old bundle and the fresh ones from the shards, in scan order."""

    kind = "update"

    def __init__(self, pool: Path, old: Bundle, scan: ScanResult, changes: PoolChanges, options: BuildOptions) -> None:
        self.pool = pool
        self.old = old
        self.scan = scan
        self.changes = changes
        self.options = options
        self.spec = options.spec.canonical()
        self.tiles = options.tiles
        # Kept files need tiles computed when the old bundle has none of this kind.
        self.tiles_from_old = self.tiles is None or old.manifest.tiles == self.tiles
        self._tasks: list[ChunkTask] = []
        self._tile_tasks: list[ChunkTask] = []

    def plan(self) -> dict[str, Any]:
        return {
            "update_of": self.old.bundle_id,
            "pool_fingerprint": self.scan.fingerprint(),
            "chunk_size": self.options.chunk_size,
            "entries": len(self.changes.todo),
            "max_pixels": self.options.max_pixels,
            "spec_sha256": self.spec.sha256(),
            "tile_size": self.options.tile_size,
        }

    def prepare_assets(self, asset_dir: Path) -> None:
        for name in method_info(self.spec.method).prepare_assets(self.spec, asset_dir, self.options.model_file):
            # The kept vectors were made with the old bundle's assets: use exactly those.
            shutil.copy2(self.old.path / name, asset_dir / name)

    def tasks(self, asset_dir: Path, shard_dir: Path) -> list[ChunkTask]:
        root = self.scan.root
        self._tasks = self.options.chunk_tasks(self.changes.todo, root, asset_dir, shard_dir)
        tile_dir = shard_dir.parent / "tile-shards"
        tile_dir.mkdir(exist_ok=True)
        self._tile_tasks = []
        if not self.tiles_from_old:
            kept = [e for e in self.scan.entries if e.path in self.changes.keep]
            self._tile_tasks = self.options.chunk_tasks(kept, root, asset_dir, tile_dir, features=False)
        return [*self._tasks, *self._tile_tasks]

    def describe(self, asset_dir: Path) -> BundleDescription:
        extra = {
            "tiles_added": not self.tiles_from_old,
            "updated_from": self.old.bundle_id,
            "update": self.changes.counts.to_dict(),
            "plan_sha256": sha256_json(self.plan()),
        }
        return self.options.description(asset_dir, self.scan, extra)

    def nothing_usable(self, rejected: list[ScanRejection]) -> str:
        detail = f"; {describe_unusable(rejected)}" if rejected else ""
        return f"{self.pool}: no usable images left after the update{detail}"

    def rows(self, shard_dir: Path, dim: int) -> Rows:
        rejected: list[ScanRejection] = list(self.scan.rejected)
        fresh: dict[str, tuple[RowRun, int]] = {}  # path -> (its shard's rows, its row there)
        for task in self._tasks:
            rejected.extend(shard_rejections(read_meta(shard_dir, task.index)))
            run = read_shard(shard_dir, task.index, dim, self.tiles)
            for row, raw in enumerate(run.columns["raw_path"]):
                fresh[os.fsdecode(raw)] = (run, row)
        rejected.sort(key=lambda r: sort_key(r.path))
        kept_tiles = None if self.tiles_from_old else _tile_only_rows(self._tile_tasks, self.tiles)
        keep = self.changes.keep
        order = [e.path for e in self.scan.entries if e.path in keep or e.path in fresh]
        # A kept file that was only touched gets its current mtime, as a full rebuild would record
        # (and the next update then need not hash it again).
        mtimes = {e.path: e.mtime_ns for e in self.scan.entries if e.path in keep}
        blocks = _UpdatedRows(self.old, keep, mtimes, fresh, dim, self.tiles, kept_tiles)

        def runs() -> Iterator[RowRun]:
            for start in range(0, len(order), RUN_ROWS):
                yield blocks.run(order[start : start + RUN_ROWS], start)

        return Rows(len(order), runs(), rejected, blocks.write_remap)


TileRows = dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]]


class _UpdatedRows:
    """An updated bundle's rows, a run at a time: kept rows from the old bundle, fresh ones from the shards.

    Remembers where each kept row went (id_remap.parquet). Tile data of kept rows comes from
    the old bundle, or from ``kept_tiles`` when this update computed it.
    """

    def __init__(
        self,
        old: Bundle,
        keep: dict[str, int],
        mtimes: dict[str, int],
        fresh: dict[str, tuple[RowRun, int]],
        dim: int,
        tiles: TileSpec | None,
        kept_tiles: TileRows | None,
    ) -> None:
        self.old, self.keep, self.mtimes, self.fresh = old, keep, mtimes, fresh
        self.dim, self.tiles, self.kept_tiles = dim, tiles, kept_tiles
        self.old_table = old.read_images_table()
        self.remap_old: list[int] = []
        self.remap_new: list[int] = []

    def run(self, paths: list[str], start: int) -> RowRun:
        """Rows ``start .. start + len(paths)`` of the new bundle."""
        kept = [i for i, p in enumerate(paths) if p in self.keep]
        new = [i for i, p in enumerate(paths) if p not in self.keep]
        old_ids = [self.keep[paths[i]] for i in kept]
        vectors = np.empty((len(paths), self.dim), dtype=np.float32)
        columns: dict[str, list[Any]] = {name: [None] * len(paths) for name in IMAGE_COLUMNS}
        if kept:
            vectors[kept] = self.old.vectors[np.asarray(old_ids, dtype=np.int64)]
            old_meta = self.old_table.take(pa.array(old_ids, type=pa.int64()))
            for name in IMAGE_COLUMNS:
                for i, value in zip(kept, old_meta.column(name).to_pylist(), strict=True):
                    columns[name][i] = value
            for i in kept:
                columns["mtime_ns"][i] = self.mtimes[paths[i]]
            self.remap_old.extend(old_ids)
            self.remap_new.extend(start + i for i in kept)
        for i in new:
            run, row = self.fresh[paths[i]]
            vectors[i] = run.vectors[row]
            for name in IMAGE_COLUMNS:
                columns[name][i] = run.columns[name][row]
        if self.tiles is None:
            return RowRun(vectors, columns)
        atlas, descriptors = self._tile_rows(paths, kept, old_ids, new, self.tiles)
        return RowRun(vectors, columns, atlas, descriptors)

    def _tile_rows(
        self, paths: list[str], kept: list[int], old_ids: list[int], new: list[int], tiles: TileSpec
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        atlas = np.empty((len(paths), tiles.size, tiles.size, 3), dtype=np.uint8)
        descriptors = np.empty((len(paths), tiles.dim), dtype=np.float32)
        if kept and self.kept_tiles is None:
            index = np.asarray(old_ids, dtype=np.int64)
            atlas[kept], descriptors[kept] = self.old.atlas[index], self.old.tile_descriptors[index]
        elif kept and self.kept_tiles is not None:
            for i in kept:
                atlas[i], descriptors[i] = self.kept_tiles[paths[i]]
        for i in new:
            run, row = self.fresh[paths[i]]
            assert run.atlas is not None and run.tiles is not None
            atlas[i], descriptors[i] = run.atlas[row], run.tiles[row]
        return atlas, descriptors

    def write_remap(self, work: Path) -> None:
        remap = pa.table({"old_id": self.remap_old, "new_id": self.remap_new}, schema=ID_REMAP_SCHEMA)
        pq.write_table(remap, work / ID_REMAP)


def _tile_only_rows(tasks: list[ChunkTask], tiles: TileSpec | None) -> TileRows:
    """Tiles of kept files computed for this update, by path. A kept file that no longer decodes
    (it has the size and mtime it had when its features were made) stops the update."""
    out: TileRows = {}
    if tiles is None:
        return out
    for task in tasks:
        tile_dir = Path(task.shard_dir)
        meta = read_meta(tile_dir, task.index)
        failed = shard_rejections(meta)
        if failed:
            raise BundleError(f"{failed[0].path}: kept in the bundle but no longer decodes; run a full build")
        ok = [os.fsdecode(raw) for raw in meta.column("raw_path").to_pylist()]
        atlas, descriptors = read_tile_shard(tile_dir, task.index, len(ok), tiles)
        for row, path in enumerate(ok):
            out[path] = (atlas[row], descriptors[row])
    return out
