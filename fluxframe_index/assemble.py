"""Write a bundle's vectors.npy and images.parquet from runs of rows, in final id order.

A full build feeds shards; an update feeds runs of kept rows from the old bundle
between freshly extracted shards; a merge feeds runs from each input bundle.
Memory is one run at a time, whatever the pool size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from fluxframe_index.scan import ScanRejection
from shared.bundle import (
    ATLAS,
    IMAGE_COLUMNS,
    IMAGES,
    IMAGES_ROW_GROUP,
    IMAGES_SCHEMA,
    REJECTED_SCHEMA,
    TILES,
    VECTORS,
    display_path,
)
from shared.errors import BundleError
from shared.tiles import TileSpec


@dataclass
class RowRun:
    """Consecutive bundle rows: vectors [m, d], the metadata columns (m values each), and for
    a bundle with tile data their atlas tiles [m, s, s, 3] and tile descriptors [m, dt]."""

    vectors: NDArray[np.float32]
    columns: dict[str, list[Any]]
    atlas: NDArray[np.uint8] | None = None
    tiles: NDArray[np.float32] | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


class _NpyAppender:
    """An .npy file of a known final shape written front to back with plain appends."""

    def __init__(self, path: Path, dtype: str, shape: tuple[int, ...]) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.row_shape = shape[1:]
        self.handle = open(path, "wb")  # noqa: SIM115 - closed by close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(self.handle, header)

    def append(self, rows: NDArray[Any]) -> None:
        if rows.shape[1:] != self.row_shape:
            raise BundleError(f"{self.path.name}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self.handle.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def write_rows(work: Path, dim: int, count: int, runs: Iterable[RowRun], tiles: TileSpec | None = None) -> int:
    """Stream ``runs`` into work/vectors.npy ([count, dim]) and work/images.parquet, and with
    ``tiles`` into work/atlas.npy and work/tiles.npy (every run must then carry its tile rows).

    The vectors are appended with plain writes after an .npy header: a writable
    memmap would keep every written page in this process's RSS, which then grows
    with the pool. images.parquet gets row groups of exactly IMAGES_ROW_GROUP
    rows, so a reader finds the row group of an id by division.
    """
    vectors = open(work / VECTORS, "wb")  # noqa: SIM115 - closed in the finally below
    np.lib.format.write_array_header_1_0(
        vectors, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (count, dim)}
    )
    writer = pq.ParquetWriter(work / IMAGES, IMAGES_SCHEMA)
    pending: dict[str, list[Any]] = {name: [] for name in IMAGES_SCHEMA.names}
    next_id = 0
    tile_files: list[_NpyAppender] = []
    if tiles is not None:
        tile_files = [
            _NpyAppender(work / ATLAS, "|u1", (count, tiles.size, tiles.size, 3)),
            _NpyAppender(work / TILES, "<f4", (count, tiles.dim)),
        ]
    try:
        for run in runs:
            n = len(run)
            if n == 0:
                continue
            if next_id + n > count or run.vectors.shape[1] != dim:
                raise BundleError(f"rows do not add up: {next_id + n} > {count} or dim {run.vectors.shape[1]} != {dim}")
            vectors.write(np.ascontiguousarray(run.vectors, dtype="<f4").tobytes())
            if tile_files:
                if run.atlas is None or run.tiles is None or len(run.atlas) != n or len(run.tiles) != n:
                    raise BundleError("a run of rows lacks its tile data")
                tile_files[0].append(run.atlas)
                tile_files[1].append(run.tiles)
            pending["id"].extend(range(next_id, next_id + n))
            for name in IMAGE_COLUMNS:
                pending[name].extend(run.columns[name])
            next_id += n
            while len(pending["id"]) >= IMAGES_ROW_GROUP:
                _flush(writer, pending, IMAGES_ROW_GROUP)
        _flush(writer, pending, len(pending["id"]))
        if next_id != count:
            raise BundleError(f"expected {count} rows, assembled {next_id}")
        vectors.flush()
        os.fsync(vectors.fileno())
        for tile_file in tile_files:
            tile_file.sync()
    finally:
        writer.close()
        vectors.close()
        for tile_file in tile_files:
            tile_file.close()
    return next_id


def _flush(writer: pq.ParquetWriter, pending: dict[str, list[Any]], n: int) -> None:
    if n == 0:
        return
    batch = {name: values[:n] for name, values in pending.items()}
    writer.write_table(pa.table(batch, schema=IMAGES_SCHEMA), row_group_size=IMAGES_ROW_GROUP)
    for values in pending.values():
        del values[:n]


def write_rejected(path: Path, rejected: list[ScanRejection]) -> None:
    table = pa.table(
        {
            "path": [display_path(r.path) for r in rejected],
            "reason": [r.reason for r in rejected],
            "detail": [r.detail for r in rejected],
        },
        schema=REJECTED_SCHEMA,
    )
    pq.write_table(table, path)


def sort_key(rel: str) -> bytes:
    return os.fsencode(rel)
