"""ff-index build --update: re-extract only what changed in the pool, keep the rest.

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
from shared.features.registry import create_extractor, method_info
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
    result = BuildResult(
        bundle,
        sealed.manifest,
        False,
        sealed.count,
        sealed.rejected,
        sealed.resumed_shards,
        time.perf_counter() - started,
        timings.stage_seconds(),
        scan.skipped_folders,
        timings,
    )
    return result, changes.counts


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
        return BundleDescription(
            spec=self.spec,
            blocks=tuple(create_extractor(self.spec, asset_dir).blocks),
            pool_root=self.scan.root,
            pool_fingerprint=self.scan.fingerprint(),
            request=self.options.request(),
            extra={
                "tiles_added": not self.tiles_from_old,
                "updated_from": self.old.bundle_id,
                "update": self.changes.counts.to_dict(),
                "plan_sha256": sha256_json(self.plan()),
            },
        )

    def nothing_usable(self, rejected: list[ScanRejection]) -> str:
        detail = f"; {describe_unusable(rejected)}" if rejected else ""
        return f"{self.pool}: no usable images left after the update{detail}"

    def rows(self, shard_dir: Path, dim: int) -> Rows:
        keep, tiles, old = self.changes.keep, self.tiles, self.old
        fresh: dict[str, tuple[int, int]] = {}  # path -> (task, row within the shard's accepted rows)
        runs_by_task: dict[int, RowRun] = {}
        rejected: list[ScanRejection] = list(self.scan.rejected)
        for task in self._tasks:
            rejected.extend(shard_rejections(read_meta(shard_dir, task.index)))
            run = read_shard(shard_dir, task.index, dim, tiles)
            runs_by_task[task.index] = run
            for row, raw in enumerate(run.columns["raw_path"]):
                fresh[os.fsdecode(raw)] = (task.index, row)
        rejected.sort(key=lambda r: sort_key(r.path))
        kept_tiles = _tile_only_rows(self._tile_tasks, tiles)
        order = [e.path for e in self.scan.entries if e.path in keep or e.path in fresh]
        full_old = old.read_images_table()
        # A kept file that was only touched gets its current mtime, as a full rebuild would record
        # (and the next update then need not hash it again).
        mtimes = {e.path: e.mtime_ns for e in self.scan.entries if e.path in keep}
        remap_old: list[int] = []
        remap_new: list[int] = []
        tiles_from_old = self.tiles_from_old

        def runs() -> Iterator[RowRun]:
            for start in range(0, len(order), RUN_ROWS):
                block = order[start : start + RUN_ROWS]
                vectors = np.empty((len(block), dim), dtype=np.float32)
                columns: dict[str, list[Any]] = {name: [] for name in IMAGE_COLUMNS}
                old_ids = [keep[p] for p in block if p in keep]
                old_vectors = old.vectors[np.asarray(old_ids, dtype=np.int64)] if old_ids else None
                old_meta = full_old.take(pa.array(old_ids, type=pa.int64())) if old_ids else None
                old_columns = {n: old_meta.column(n).to_pylist() for n in IMAGE_COLUMNS} if old_meta is not None else {}
                atlas = np.empty((len(block), tiles.size, tiles.size, 3), dtype=np.uint8) if tiles else None
                descriptors = np.empty((len(block), tiles.dim), dtype=np.float32) if tiles else None
                old_atlas, old_descriptors = _old_tile_rows(old, old_ids) if tiles and tiles_from_old else (None, None)
                k = 0
                for row, path in enumerate(block):
                    if path in keep:
                        assert old_vectors is not None
                        vectors[row] = old_vectors[k]
                        for name in IMAGE_COLUMNS:
                            columns[name].append(mtimes[path] if name == "mtime_ns" else old_columns[name][k])
                        if atlas is not None and descriptors is not None:
                            if old_atlas is not None and old_descriptors is not None:
                                atlas[row], descriptors[row] = old_atlas[k], old_descriptors[k]
                            else:
                                atlas[row], descriptors[row] = kept_tiles[path]
                        remap_old.append(keep[path])
                        remap_new.append(start + row)
                        k += 1
                    else:
                        task_index, shard_row = fresh[path]
                        run = runs_by_task[task_index]
                        vectors[row] = run.vectors[shard_row]
                        for name in IMAGE_COLUMNS:
                            columns[name].append(run.columns[name][shard_row])
                        if atlas is not None and descriptors is not None:
                            assert run.atlas is not None and run.tiles is not None
                            atlas[row], descriptors[row] = run.atlas[shard_row], run.tiles[shard_row]
                yield RowRun(vectors, columns, atlas, descriptors)

        def write_remap(work: Path) -> None:
            remap = pa.table({"old_id": remap_old, "new_id": remap_new}, schema=ID_REMAP_SCHEMA)
            pq.write_table(remap, work / ID_REMAP)

        return Rows(len(order), runs(), rejected, write_remap)


def _old_tile_rows(old: Bundle, ids: list[int]) -> tuple[npt.NDArray[np.uint8] | None, npt.NDArray[np.float32] | None]:
    if not ids:
        return None, None
    index = np.asarray(ids, dtype=np.int64)
    return np.asarray(old.atlas[index]), np.asarray(old.tile_descriptors[index])


def _tile_only_rows(
    tasks: list[ChunkTask], tiles: TileSpec | None
) -> dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]]:
    """Tiles of kept files computed for this update, by path. A kept file that no longer decodes
    (it has the size and mtime it had when its features were made) stops the update."""
    out: dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]] = {}
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
