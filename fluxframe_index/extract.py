"""The worker side of a build: one chunk of pool files in, one shard on disk out.

A worker gets hundreds of paths and writes one float32 array and one small Parquet
table; only a few counters travel back to the parent (per-image inter-process
traffic would cost more than the features). Every shard file is written
atomically, the metadata last, so a shard is complete exactly when its metadata
file exists: resume skips those.

Tile data (shared.tiles) comes from the same decoded image as the features: the atlas
tile is a square centre crop of it and its descriptor is computed from that tile, so
tile mode costs no second read or decode of the pool.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from fluxframe_index.shards import shard_paths, tile_shard_paths
from shared.atomic import atomic_save_npy, atomic_write_bytes
from shared.bundle import IMAGE_COLUMNS, IMAGES_SCHEMA, display_path
from shared.errors import ImageDecodeError
from shared.features.base import Extractor
from shared.features.neural import configure_runtime
from shared.features.registry import create_extractor
from shared.images import DEFAULT_MAX_PIXELS, decode_image, prepare_image, read_header, read_image_bytes
from shared.spec import FeatureSpec
from shared.tiles import atlas_tile, describe_tiles

# A shard's table: the images table's columns (without the id, given at assembly) for every file
# of the chunk, its place in the scan, and whether it was usable.
SHARD_META_SCHEMA = pa.schema(
    [
        ("entry", pa.int64()),
        *(IMAGES_SCHEMA.field(name) for name in IMAGE_COLUMNS),
        ("status", pa.string()),  # "ok" or a rejection reason
        ("detail", pa.string()),
    ]
)
# Images per extractor call inside a chunk: bounds a worker's memory for big comparison sizes.
FEATURE_BATCH = 64


@dataclass(frozen=True)
class ChunkTask:
    index: int
    first_entry: int
    paths: list[str]
    sizes: list[int]
    mtimes: list[int]
    pool_root: str
    spec_json: dict[str, Any]
    asset_dir: str
    shard_dir: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    jobs: int = 1  # worker processes sharing this machine's cores (sizes ONNX Runtime's thread pool)
    tile_size: int = 0  # atlas tile side in px; 0: no tile data
    features: bool = True  # False: tile data only (adding tiles to a bundle whose features are kept)


@dataclass(frozen=True)
class ChunkStats:
    index: int
    images: int
    ok: int
    rejected: int
    read_s: float
    decode_s: float
    feature_s: float
    write_s: float
    tile_s: float = 0.0  # atlas tile crops and their descriptors
    prepare_s: float = 0.0  # crop and resize of the decoded images to the comparison size


_EXTRACTORS: dict[tuple[str, str], Extractor] = {}


def _extractor(spec: FeatureSpec, asset_dir: str, jobs: int) -> Extractor:
    # One extractor (and, for neural methods, one ONNX session) per worker process, reused across chunks.
    key = (spec.sha256(), asset_dir)
    if key not in _EXTRACTORS:
        cv2.setNumThreads(1)  # parallelism comes from the worker processes; nested threads oversubscribe
        if spec.is_neural:
            # jobs x threads must fit the cores; FLUXFRAME_ORT_THREADS, when set, still wins.
            configure_runtime(jobs=jobs)
        _EXTRACTORS[key] = create_extractor(spec, Path(asset_dir))
    return _EXTRACTORS[key]


def extract_chunk(task: ChunkTask) -> ChunkStats:
    spec = FeatureSpec.from_dict(task.spec_json)
    extractor = _extractor(spec, task.asset_dir, task.jobs) if task.features else None
    size = spec.prepared_size()
    root = Path(task.pool_root)
    rows: dict[str, list[Any]] = {name: [] for name in SHARD_META_SCHEMA.names}
    prepared: list[NDArray[np.uint8]] = []
    tiles: list[NDArray[np.uint8]] = []
    read_s = decode_s = prepare_s = tile_s = 0.0
    for offset, rel in enumerate(task.paths):
        status, detail, width, height, digest = "ok", "", 0, 0, ""
        t0 = time.perf_counter()
        try:
            data = read_image_bytes(root / rel)
            digest = hashlib.sha256(data).hexdigest()
            t1 = time.perf_counter()
            read_s += t1 - t0
            image = decode_image(data, min_size=size, aspect=size[0] / size[1], max_pixels=task.max_pixels)
            # The full size as displayed (EXIF orientation 5-8 swaps the axes), not the DCT-scaled
            # decode's size and not the stored one: the same size load_prepared reports.
            width, height = read_header(data).display_size
            t2 = time.perf_counter()
            decode_s += t2 - t1
            if task.features:
                prepared.append(prepare_image(image, size))
            t3 = time.perf_counter()
            prepare_s += t3 - t2
            if task.tile_size:
                tiles.append(atlas_tile(image, task.tile_size))
                tile_s += time.perf_counter() - t3
        except ImageDecodeError as exc:
            status, detail = exc.reason, exc.detail
        rows["entry"].append(task.first_entry + offset)
        rows["path"].append(display_path(rel))
        rows["raw_path"].append(os.fsencode(rel))
        rows["bytes"].append(task.sizes[offset])
        rows["mtime_ns"].append(task.mtimes[offset])
        rows["width"].append(width)
        rows["height"].append(height)
        rows["sha256"].append(digest)
        rows["status"].append(status)
        rows["detail"].append(detail)
    t2 = time.perf_counter()
    vec_path, meta_path = shard_paths(Path(task.shard_dir), task.index)
    if extractor is not None:
        parts = [extractor.extract(prepared[i : i + FEATURE_BATCH]) for i in range(0, len(prepared), FEATURE_BATCH)]
        dim = sum(b.dim for b in extractor.blocks)
        vectors = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    t3 = time.perf_counter()
    if task.tile_size:
        atlas = np.stack(tiles) if tiles else np.zeros((0, task.tile_size, task.tile_size, 3), dtype=np.uint8)
        descriptors = describe_tiles(atlas)
        tile_s += time.perf_counter() - t3
        atlas_path, tiles_path = tile_shard_paths(Path(task.shard_dir), task.index)
        atomic_save_npy(atlas_path, atlas)
        atomic_save_npy(tiles_path, descriptors)
    t4 = time.perf_counter()
    if extractor is not None:
        atomic_save_npy(vec_path, vectors.astype(np.float32, copy=False))
    table = pa.table(rows, schema=SHARD_META_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write_bytes(meta_path, buffer.getvalue())
    ok = len(prepared) if task.features else len(tiles)
    return ChunkStats(
        index=task.index,
        images=len(task.paths),
        ok=ok,
        rejected=len(task.paths) - ok,
        read_s=read_s,
        decode_s=decode_s,
        feature_s=t3 - t2,
        write_s=time.perf_counter() - t4,
        tile_s=tile_s,
        prepare_s=prepare_s,
    )
