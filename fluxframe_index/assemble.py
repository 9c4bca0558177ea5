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
from shared.bundle import IMAGES, IMAGES_ROW_GROUP, IMAGES_SCHEMA, REJECTED_SCHEMA, VECTORS, display_path
from shared.errors import BundleError

# Metadata columns of images.parquet other than id, in schema order.
IMAGE_COLUMNS = ("path", "raw_path", "bytes", "mtime_ns", "width", "height", "sha256")


@dataclass
class RowRun:
    """Consecutive bundle rows: vectors [m, d] and the metadata columns (m values each)."""

    vectors: NDArray[np.float32]
    columns: dict[str, list[Any]]

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def write_rows(work: Path, dim: int, count: int, runs: Iterable[RowRun]) -> int:
    """Stream ``runs`` into work/vectors.npy ([count, dim]) and work/images.parquet.

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
    try:
        for run in runs:
            n = len(run)
            if n == 0:
                continue
            if next_id + n > count or run.vectors.shape[1] != dim:
                raise BundleError(f"rows do not add up: {next_id + n} > {count} or dim {run.vectors.shape[1]} != {dim}")
            vectors.write(np.ascontiguousarray(run.vectors, dtype="<f4").tobytes())
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
    finally:
        writer.close()
        vectors.close()
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
