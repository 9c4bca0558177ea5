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

import dataclasses
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

from fluxframe_index.assemble import RowRun, sort_key, write_rows
from fluxframe_index.build import (
    BuildOptions,
    BuildResult,
    _is_up_to_date,
    bundle_lock,
    chunk_tasks,
    discard_staging,
    load_tile_shard,
    prepare_staging,
    refuse_bundle_inside_pool,
    run_chunks,
    seal_bundle,
    shard_run,
    staging_dir,
)
from fluxframe_index.extract import ChunkStats, ChunkTask, shard_paths
from fluxframe_index.scan import PoolEntry, ScanRejection, ScanResult, describe_unusable, scan_pool
from shared.bundle import IMAGE_COLUMNS, Bundle, display_path, open_bundle
from shared.cli_support import progress_bar
from shared.errors import BundleError, InputError, UsageError
from shared.features.registry import create_extractor, method_info
from shared.hashing import sha256_json
from shared.tiles import TileSpec

ID_REMAP = "id_remap.parquet"
ID_REMAP_SCHEMA = pa.schema([("old_id", pa.int64()), ("new_id", pa.int64())])


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


def update_bundle(
    pool: Path,
    bundle: Path,
    options: BuildOptions,
    *,
    on_chunk: Callable[[ChunkStats], None] | None = None,
) -> tuple[BuildResult, UpdateCounts]:
    """Bring ``bundle`` up to date with ``pool``, extracting only new and changed files."""
    refuse_bundle_inside_pool(pool, bundle)
    with bundle_lock(bundle):
        return _update_bundle(pool, Path(bundle).absolute(), options, on_chunk)


def _update_bundle(
    pool: Path, bundle: Path, options: BuildOptions, on_chunk: Callable[[ChunkStats], None] | None
) -> tuple[BuildResult, UpdateCounts]:
    started = time.perf_counter()
    old = open_bundle(bundle, verify=False)
    spec = options.spec.canonical()
    if old.manifest.spec_sha256 != spec.sha256():
        raise UsageError(
            f"{bundle}: was built with other feature options ({old.spec.method}); an update keeps them — "
            "drop --update and add --replace for a full rebuild with the new options"
        )
    scan = scan_pool(pool, limit=options.limit)
    fingerprint = scan.fingerprint()
    if _is_up_to_date(old.manifest, spec, fingerprint, options, pool_root=scan.root):
        # Same paths, sizes and mtimes as when the bundle was written: files it rejected then
        # would be rejected again, and a new bundle_id would void render checkpoints for nothing.
        counts = UpdateCounts(kept=old.count, added=0, changed=0, deleted=0)
        return BuildResult(bundle, old.manifest, True, old.count, [], 0, time.perf_counter() - started), counts
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
    counts = UpdateCounts(len(keep), len(todo) - changed - retried, changed, deleted, retried)

    stage = staging_dir(bundle)
    plan = {
        "update_of": old.bundle_id,
        "pool_fingerprint": fingerprint,
        "chunk_size": options.chunk_size,
        "entries": len(todo),
        "max_pixels": options.max_pixels,
        "spec_sha256": spec.sha256(),
        "tile_size": options.tile_size,
    }
    tiles = options.tiles
    # Kept files need tiles computed when the old bundle has none of this kind.
    tiles_from_old = tiles is None or old.manifest.tiles == tiles
    prepare_staging(stage, plan)
    shard_dir, asset_dir = stage / "shards", stage / "assets"
    asset_dir.mkdir(exist_ok=True)
    for name in method_info(spec.method).prepare_assets(spec, asset_dir, options.model_file):
        # The kept vectors were made with the old bundle's assets: use exactly those.
        shutil.copy2(old.path / name, asset_dir / name)
    todo_scan = ScanResult(root=scan.root, entries=todo, rejected=[])
    tasks = chunk_tasks(todo_scan, spec, asset_dir, shard_dir, options)
    tile_dir = stage / "tile-shards"
    tile_dir.mkdir(exist_ok=True)
    kept_entries = [e for e in scan.entries if e.path in keep]
    tile_tasks = []
    if not tiles_from_old:
        kept_scan = ScanResult(root=scan.root, entries=kept_entries, rejected=[])
        tile_tasks = [
            dataclasses.replace(t, features=False) for t in chunk_tasks(kept_scan, spec, asset_dir, tile_dir, options)
        ]
    pending = [t for t in tasks if not shard_paths(shard_dir, t.index)[1].exists()]
    pending += [t for t in tile_tasks if not shard_paths(tile_dir, t.index)[1].exists()]
    todo_images = len(todo) + (0 if tiles_from_old else len(kept_entries))
    with progress_bar(todo_images, "extract", "img", options.progress) as bar:
        for stats in run_chunks(pending, options):
            bar.update(stats.images)
            if on_chunk is not None:
                on_chunk(stats)

    extractor = create_extractor(spec, asset_dir)
    dim = sum(b.dim for b in extractor.blocks)
    work = stage / "bundle"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    for asset in asset_dir.iterdir():
        shutil.copy2(asset, work / asset.name)

    fresh: dict[str, tuple[int, int]] = {}  # path -> (task, row within the shard's accepted rows)
    runs_by_task: dict[int, RowRun] = {}
    rejected: list[ScanRejection] = list(scan.rejected)
    for task in tasks:
        meta = pq.read_table(shard_paths(shard_dir, task.index)[1])
        run, bad = shard_run(shard_dir, task.index, meta, dim, tiles)
        rejected.extend(bad)
        runs_by_task[task.index] = run
        for row, raw in enumerate(run.columns["raw_path"]):
            fresh[os.fsdecode(raw)] = (task.index, row)
    kept_tiles = _tile_only_rows(tile_tasks, tile_dir, tiles)
    order = [e.path for e in scan.entries if e.path in keep or e.path in fresh]
    count = len(order)
    if count == 0:
        discard_staging(stage)  # a refused update leaves nothing behind; the bundle stays as it was
        detail = f"; {describe_unusable(rejected)}" if rejected else ""
        raise InputError(f"{pool}: no usable images left after the update{detail}")
    full_old = old.read_images_table()
    # A kept file that was only touched gets its current mtime, as a full rebuild would record
    # (and the next update then need not hash it again).
    mtimes = {e.path: e.mtime_ns for e in scan.entries if e.path in keep}
    remap_old: list[int] = []
    remap_new: list[int] = []

    def runs() -> Iterator[RowRun]:
        for start in range(0, count, 4096):
            block = order[start : start + 4096]
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

    write_rows(work, dim, count, runs(), tiles)
    pq.write_table(pa.table({"old_id": remap_old, "new_id": remap_new}, schema=ID_REMAP_SCHEMA), work / ID_REMAP)
    rejected.sort(key=lambda r: sort_key(r.path))
    manifest = seal_bundle(
        work,
        bundle,
        spec=spec,
        blocks=tuple(extractor.blocks),
        pool_root=scan.root,
        pool_fingerprint=fingerprint,
        count=count,
        rejected=rejected,
        options=options,
        extra={
            "tiles_added": not tiles_from_old,
            "updated_from": old.bundle_id,
            "update": counts.to_dict(),
            "plan_sha256": sha256_json(plan),
        },
    )
    discard_staging(stage)
    seconds = time.perf_counter() - started
    result = BuildResult(bundle, manifest, False, count, rejected, 0, seconds, skipped_folders=scan.skipped_folders)
    return result, counts


def _old_tile_rows(old: Bundle, ids: list[int]) -> tuple[npt.NDArray[np.uint8] | None, npt.NDArray[np.float32] | None]:
    if not ids:
        return None, None
    index = np.asarray(ids, dtype=np.int64)
    return np.asarray(old.atlas[index]), np.asarray(old.tile_descriptors[index])


def _tile_only_rows(
    tasks: list[ChunkTask], tile_dir: Path, tiles: TileSpec | None
) -> dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]]:
    """Tiles of kept files computed for this update, by path. A kept file that no longer decodes
    (it has the size and mtime it had when its features were made) stops the update."""
    out: dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]] = {}
    if tiles is None:
        return out
    for task in tasks:
        meta = pq.read_table(shard_paths(tile_dir, task.index)[1])
        statuses = meta.column("status").to_pylist()
        raw_paths = meta.column("raw_path").to_pylist()
        ok = [os.fsdecode(raw) for raw, status in zip(raw_paths, statuses, strict=True) if status == "ok"]
        failed = [os.fsdecode(raw) for raw, status in zip(raw_paths, statuses, strict=True) if status != "ok"]
        if failed:
            raise BundleError(f"{failed[0]}: kept in the bundle but no longer decodes; run a full build")
        atlas, descriptors = load_tile_shard(tile_dir, task.index, len(ok), tiles)
        for row, path in enumerate(ok):
            out[path] = (atlas[row], descriptors[row])
    return out
