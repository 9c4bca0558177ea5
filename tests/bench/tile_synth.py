"""Large tile bundles for the tile benchmark: a real bundle's rows, atlas and tile descriptors tiled to N.

synth.py's bundles carry no tile data, and tile mode never searches the feature vectors,
so this one is simpler: row i is a copy of real row i mod count in every file (vectors,
images.parquet, atlas.npy), and the tile descriptors of every copy after the first get
Gaussian noise of σ = 1 ΔE per dimension (as tile_bench's scale figures), so that a
cell's neighbours are many near-copies, not one exact tie repeated. With ``ivf`` the
bundle gets tiles.faiss exactly as ``ff-index build --index ivf`` makes it. Cached under
.bench/ until its recipe changes; written with finalize_bundle (manifest, sha256).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fluxframe_index.seal import build_tile_ivf
from shared.bundle import (
    ATLAS,
    TILES,
    VECTORS,
    IndexInfo,
    open_bundle,
)
from tests.bench.synth import ROWS_PER_BLOCK, cached, finalize_synthetic, write_tables

TILE_SYNTH_VERSION = 1
DESCRIPTOR_NOISE_DELTA_E = 1.0


def tile_recipe(source_id: str, n: int, ivf: bool) -> dict[str, Any]:
    return {"tile_version": TILE_SYNTH_VERSION, "source": source_id, "n": n, "ivf": ivf}


def make_tile_bundle(source_path: str, dest_path: str, n: int, ivf: bool = False) -> dict[str, Any]:
    """Child process: write (or reuse) an N-row bundle with tile data, tiled from ``source``; returns timings."""
    source = open_bundle(Path(source_path), verify=False)
    spec = source.tile_spec()  # a source without tile data fails here, with the line that names the fix
    dest = Path(dest_path).absolute()
    want = tile_recipe(source.bundle_id, n, ivf)
    if cached(dest, want) is not None:
        return {"reused": True, "n": n}
    work = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    count = source.count
    rng = np.random.default_rng([TILE_SYNTH_VERSION, n])
    sources: dict[str, NDArray[Any]] = {VECTORS: np.asarray(source.vectors), ATLAS: np.asarray(source.atlas)}
    descriptors = np.asarray(source.tile_descriptors, dtype=np.float32)
    outs: dict[str, np.memmap[Any, np.dtype[Any]]] = {
        name: np.lib.format.open_memmap(work / name, mode="w+", dtype=real.dtype, shape=(n, *real.shape[1:]))
        for name, real in sources.items()
    }
    tiles_out = np.lib.format.open_memmap(work / TILES, mode="w+", dtype=np.float32, shape=(n, spec.dim))
    for start in range(0, n, ROWS_PER_BLOCK):
        ids = np.arange(start, min(n, start + ROWS_PER_BLOCK))
        for name, real in sources.items():
            outs[name][start : start + ids.size] = real[ids % count]
        noise = rng.normal(0, DESCRIPTOR_NOISE_DELTA_E, (ids.size, spec.dim)).astype(np.float32)
        noise[ids < count] = 0  # the first copy is the real bundle itself
        tiles_out[start : start + ids.size] = descriptors[ids % count] + noise
    for out in (*outs.values(), tiles_out):
        out.flush()
    del outs, tiles_out
    write_tables(source, work, n)
    rows_s = time.perf_counter() - started
    ivf_s = 0.0
    if ivf:
        t0 = time.perf_counter()
        build_tile_ivf(work, progress=False)
        ivf_s = time.perf_counter() - t0
    # The feature vectors are searched by no tile render: no IVF over them.
    finalize_synthetic(source, work, dest, n, want, IndexInfo(), tiles=spec)
    return {"reused": False, "n": n, "rows_seconds": rows_s, "tile_ivf_build_seconds": ivf_s}
