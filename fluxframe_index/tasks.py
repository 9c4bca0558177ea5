"""Cut a list of pool files into chunk tasks: the unit a worker extracts into one shard."""

from __future__ import annotations

import math
from pathlib import Path

from fluxframe_index.extract import ChunkTask
from fluxframe_index.scan import PoolEntry
from shared.spec import FeatureSpec


def chunk_tasks(
    entries: list[PoolEntry],
    root: Path,
    spec: FeatureSpec,
    asset_dir: Path,
    shard_dir: Path,
    *,
    chunk_size: int,
    max_pixels: int,
    jobs: int,
    tile_size: int | None,
    features: bool = True,
) -> list[ChunkTask]:
    """Consecutive runs of ``chunk_size`` entries; task i writes shard i of ``shard_dir``."""
    spec_json = spec.to_dict()
    tasks = []
    for index in range(math.ceil(len(entries) / chunk_size)):
        first = index * chunk_size
        chunk = entries[first : first + chunk_size]
        tasks.append(
            ChunkTask(
                index=index,
                first_entry=first,
                paths=[e.path for e in chunk],
                sizes=[e.size for e in chunk],
                mtimes=[e.mtime_ns for e in chunk],
                pool_root=str(root),
                spec_json=spec_json,
                asset_dir=str(asset_dir),
                shard_dir=str(shard_dir),
                max_pixels=max_pixels,
                jobs=jobs,
                tile_size=tile_size or 0,
                features=features,
            )
        )
    return tasks
