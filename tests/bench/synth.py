"""Large bundles for the search figures: real features, tiled and perturbed, as real bundles.

A bundle of a few thousand real pool pictures is tiled to N rows; every copy after
the first gets Gaussian noise of a per-row strength and each block is L2-normalised
again, exactly as an extractor finishes its vectors. images.parquet maps every row to
the real picture it was made from, so ff-render can open, search and even render a
synthetic bundle. The result is written with shared.bundle.finalize_bundle (manifest,
sha256 of every file) and cached under .bench/ until its recipe changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from fluxframe_index.ivf import auto_nlist, auto_nprobe, build_ivf_index
from shared.bundle import (
    IMAGES,
    IMAGES_ROW_GROUP,
    IMAGES_SCHEMA,
    INDEX,
    REJECTED,
    REJECTED_SCHEMA,
    VECTORS,
    Bundle,
    IndexInfo,
    finalize_bundle,
    open_bundle,
)
from shared.errors import BundleError
from shared.features.base import Block, finish_blocks
from shared.hashing import sha256_json
from shared.tiles import TileSpec

SYNTH_VERSION = 2
ROWS_PER_BLOCK = 65_536
# Noise norm relative to the unit vector: a copy's cosine to its source is ~0.82..0.93, about
# what the real pool's 1st..10th neighbours have (0.95..0.90), so a query's neighbours are
# copies of many pictures. With less noise (cosine 0.91..0.99) every query's top 10 were
# near-clones of one picture and IVF recall was 1.0 at any nprobe: a flattering test.
NOISE_RANGE = (0.4, 0.75)
QUERY_NOISE = 0.3


def perturb(
    vectors: NDArray[np.float32], blocks: tuple[Block, ...], strength: NDArray[np.float32], rng: np.random.Generator
) -> NDArray[np.float32]:
    """Add Gaussian noise of norm ~``strength`` per row, then re-finish the blocks (each unit, scaled)."""
    n, dim = vectors.shape
    noise = rng.standard_normal((n, dim), dtype=np.float32)
    noise *= (strength / np.float32(np.sqrt(dim)))[:, None]
    noisy = vectors + noise
    parts, start = [], 0
    for block in blocks:
        parts.append(noisy[:, start : start + block.dim])
        start += block.dim
    return finish_blocks(parts)


def recipe(source: Bundle, n: int, ivf: bool) -> dict[str, Any]:
    """Everything a cached synthetic bundle depends on, ff-index's IVF rules included."""
    want: dict[str, Any] = {
        "version": SYNTH_VERSION,
        "source": source.bundle_id,
        "n": n,
        "ivf": ivf,
        "noise": list(NOISE_RANGE),
    }
    if ivf:
        # The manifest records the default nprobe: a new rule in ff-index must not meet an old bundle.
        nlist = auto_nlist(n)
        want.update(nlist=nlist, default_nprobe=auto_nprobe(nlist))
    return want


def cached(dest: Path, want: dict[str, Any]) -> Bundle | None:
    with contextlib.suppress(BundleError, OSError):
        bundle = open_bundle(dest, verify=False)
        if bundle.manifest.extra.get("synthetic") == want:
            return bundle
    return None


def make_synthetic_bundle(source_path: str, dest_path: str, n: int, ivf: bool = True) -> dict[str, Any]:
    """Child process: write (or reuse) an N-row bundle tiled from ``source``; returns timings."""
    source = open_bundle(Path(source_path), verify=False)
    dest = Path(dest_path).absolute()
    want = recipe(source, n, ivf)
    if cached(dest, want) is not None:
        return {"reused": True, "n": n}
    work = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    real = np.asarray(source.vectors, dtype=np.float32)
    count, dim = real.shape
    blocks = source.manifest.blocks
    rng = np.random.default_rng([SYNTH_VERSION, n])
    out = np.lib.format.open_memmap(work / VECTORS, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, ROWS_PER_BLOCK):
        ids = np.arange(start, min(n, start + ROWS_PER_BLOCK))
        base = real[ids % count]
        strength = rng.uniform(*NOISE_RANGE, size=ids.size).astype(np.float32)
        strength[ids < count] = 0  # the first copy is the real bundle itself
        out[start : start + ids.size] = perturb(base, blocks, strength, rng)
    out.flush()
    del out
    write_tables(source, work, n)
    vectors_s = time.perf_counter() - started
    index = IndexInfo()
    ivf_s = 0.0
    if ivf:
        t0 = time.perf_counter()
        index = build_ivf_index(work / VECTORS, work / INDEX, nlist=None, progress=False)
        ivf_s = time.perf_counter() - t0
    finalize_synthetic(source, work, dest, n, want, index)
    return {
        "reused": False,
        "n": n,
        "vectors_seconds": vectors_s,
        "ivf_build_seconds": ivf_s,
        "nlist": index.nlist,
        "default_nprobe": index.default_nprobe,
    }


def make_flat_twin(source_path: str, dest_path: str) -> dict[str, Any]:
    """Child process: the same bundle without its IVF index (files hard-linked), searched exactly."""
    source = open_bundle(Path(source_path), verify=False)
    dest = Path(dest_path).absolute()
    want = {**source.manifest.extra["synthetic"], "ivf": False, "twin_of": source.bundle_id}
    if cached(dest, want) is not None:
        return {"reused": True}
    work = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in source.manifest.files:
        if name != INDEX:
            os.link(source.path / name, work / name)
    m = source.manifest
    finalize_bundle(
        work,
        dest,
        spec=m.spec,
        blocks=m.blocks,
        pool_root=source.pool_root,
        pool_fingerprint=m.pool_fingerprint,
        count=m.count,
        rejected_count=m.rejected_count,
        dim=m.dim,
        index=IndexInfo(),
        extra={"synthetic": want},
    )
    return {"reused": False}


def write_tables(source: Bundle, work: Path, n: int) -> None:
    """A synthetic bundle's images.parquet (row i is the real picture row i was made from) and an
    empty rejected.parquet."""
    _write_images(source, work / IMAGES, n)
    pq.write_table(pa.table({"path": [], "reason": [], "detail": []}, schema=REJECTED_SCHEMA), work / REJECTED)


def finalize_synthetic(
    source: Bundle,
    work: Path,
    dest: Path,
    n: int,
    want: dict[str, Any],
    index: IndexInfo,
    tiles: TileSpec | None = None,
) -> None:
    """Seal ``work`` (N rows made from ``source`` by the recipe ``want``) into ``dest``: manifest, sha256, swap."""
    m = source.manifest
    finalize_bundle(
        work,
        dest,
        spec=m.spec,
        blocks=m.blocks,
        pool_root=source.pool_root,
        pool_fingerprint=sha256_json({"synthetic": want, "pool": m.pool_fingerprint}),
        count=n,
        rejected_count=0,
        dim=m.dim,
        index=index,
        extra={"synthetic": want},
        tiles=tiles,
    )


def _write_images(source: Bundle, path: Path, n: int) -> None:
    """images.parquet: row i describes the real picture that row i was made from."""
    table = source.read_images_table()
    count = table.num_rows
    writer = pq.ParquetWriter(path, IMAGES_SCHEMA)
    for start in range(0, n, IMAGES_ROW_GROUP):
        ids = np.arange(start, min(n, start + IMAGES_ROW_GROUP))
        rows = table.take(pa.array(ids % count))
        rows = rows.set_column(rows.schema.get_field_index("id"), "id", pa.array(ids, type=pa.int64()))
        writer.write_table(rows.select(IMAGES_SCHEMA.names).cast(IMAGES_SCHEMA), row_group_size=IMAGES_ROW_GROUP)
    writer.close()


def frame_like_queries(
    vectors: NDArray[np.float32], blocks: tuple[Block, ...], ids: NDArray[np.int64], seed: int
) -> NDArray[np.float32]:
    """Queries that look like video frames of pool pictures: the pictures' vectors with noise."""
    rng = np.random.default_rng(seed)
    order = np.argsort(ids)
    base = np.empty((ids.size, vectors.shape[1]), dtype=np.float32)
    base[order] = vectors[ids[order]]  # rows of a memory map are read fastest in ascending order
    strength = np.full(ids.size, QUERY_NOISE, dtype=np.float32)
    return perturb(base, blocks, strength, rng)
