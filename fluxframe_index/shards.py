"""A build's shards on disk: where a chunk's files are, and reading them back as bundle rows.

A shard is complete exactly when its metadata file exists (extract writes it last), so
resume skips those chunks and a source reads only complete shards.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from fluxframe_index.assemble import RowRun
from fluxframe_index.scan import ScanRejection
from shared.bundle import IMAGE_COLUMNS
from shared.errors import BundleError
from shared.tiles import TileSpec


def shard_paths(shard_dir: Path, index: int) -> tuple[Path, Path]:
    """A shard's vectors and its metadata table (the file that marks it complete)."""
    stem = shard_dir / f"shard-{index:06d}"
    return stem.with_suffix(".vec.npy"), stem.with_suffix(".meta.parquet")


def tile_shard_paths(shard_dir: Path, index: int) -> tuple[Path, Path]:
    """A shard's atlas tiles and tile descriptors, one row per accepted image (as its vectors)."""
    stem = shard_dir / f"shard-{index:06d}"
    return stem.with_suffix(".atlas.npy"), stem.with_suffix(".tiles.npy")


def shard_is_complete(shard_dir: Path, index: int) -> bool:
    return shard_paths(shard_dir, index)[1].exists()


def read_meta(shard_dir: Path, index: int) -> pa.Table:
    return pq.read_table(shard_paths(shard_dir, index)[1])


def shard_row_count(shard_dir: Path, index: int) -> int:
    """Accepted rows of a shard, from its .npy header alone."""
    shard = np.load(shard_paths(shard_dir, index)[0], mmap_mode="r", allow_pickle=False)
    return int(shard.shape[0])


def shard_rejections(meta: pa.Table) -> list[ScanRejection]:
    """The files of a shard that could not be used, and why."""
    statuses = meta.column("status").to_pylist()
    raw_paths = meta.column("raw_path").to_pylist()
    details = meta.column("detail").to_pylist()
    return [
        ScanRejection(os.fsdecode(raw), status, detail)
        for raw, status, detail in zip(raw_paths, statuses, details, strict=True)
        if status != "ok"
    ]


def read_shard(shard_dir: Path, index: int, dim: int, tiles: TileSpec | None = None) -> RowRun:
    """One shard's accepted rows as a RowRun (with their tile data when ``tiles``)."""
    meta = read_meta(shard_dir, index)
    shard = np.load(shard_paths(shard_dir, index)[0], allow_pickle=False)
    ok_rows = [i for i, s in enumerate(meta.column("status").to_pylist()) if s == "ok"]
    if shard.shape != (len(ok_rows), dim):
        raise BundleError(f"shard {index} has shape {shard.shape}, expected ({len(ok_rows)}, {dim}); rebuild")
    accepted = meta.take(pa.array(ok_rows, type=pa.int64()))
    run = RowRun(shard, {name: accepted.column(name).to_pylist() for name in IMAGE_COLUMNS})
    if tiles is not None:
        run.atlas, run.tiles = read_tile_shard(shard_dir, index, len(ok_rows), tiles)
    return run


def read_tile_shard(
    shard_dir: Path, index: int, rows: int, tiles: TileSpec
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """A shard's atlas tiles and descriptors, checked against the rows its metadata accepted."""
    atlas_path, tiles_path = tile_shard_paths(shard_dir, index)
    atlas = np.load(atlas_path, allow_pickle=False)
    descriptors = np.load(tiles_path, allow_pickle=False)
    if atlas.shape != (rows, tiles.size, tiles.size, 3) or descriptors.shape != (rows, tiles.dim):
        raise BundleError(f"shard {index} has tile data of shapes {atlas.shape} {descriptors.shape}; rebuild")
    return atlas, descriptors
