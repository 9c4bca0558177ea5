"""Small real bundles for the reliability tests, and the tools to tamper with them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fluxframe_index.build import BuildOptions, build_bundle
from shared.bundle import IMAGES, IMAGES_SCHEMA, MANIFEST, finalize_bundle, read_manifest
from shared.hashing import sha256_json
from shared.spec import FeatureSpec
from tests.pools import make_pool

POOL_IMAGES = 24


def write_small_pool(folder: Path, n: int = POOL_IMAGES, seed: int = 0) -> list[Path]:
    """Distinct real-content JPEGs, small enough to index in a fraction of a second."""
    return make_pool(folder, n, seed, max_side=320, min_side=160)


def build_small_bundle(pool: Path, dest: Path, *, method: str = "canny", ivf: bool = False) -> Path:
    options = BuildOptions(
        spec=FeatureSpec(method=method, comparison_size=64),
        jobs=1,
        chunk_size=8,
        index_kind="ivf" if ivf else "flat",
        ivf_nlist=2 if ivf else None,
    )
    return build_bundle(pool, dest, options).bundle


def copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def same_class_flip(byte: int) -> int | None:
    """Another character of the same class (digit, lower or upper case letter), or None for any other byte.

    Unlike ``^ 0xFF`` (never valid UTF-8, so a JSON file fails to parse before any check), the
    changed file is still valid text and, inside a string or a number, valid JSON: only a hash
    can tell it from the real one.
    """
    for first, last in ((ord("0"), ord("9")), (ord("a"), ord("z")), (ord("A"), ord("Z"))):
        if first <= byte <= last:
            return byte + 1 if byte < last else first
    return None


def change_character(path: Path, position: int) -> None:
    """Change the first letter or digit at or after ``position`` (wrapping) to another one."""
    data = bytearray(path.read_bytes())
    for offset in range(len(data)):
        where = (position + offset) % len(data)
        replacement = same_class_flip(data[where])
        if replacement is not None:
            data[where] = replacement
            path.write_bytes(bytes(data))
            return
    raise ValueError(f"{path} holds no letter or digit")


def rewrite_manifest(bundle: Path, change: dict[str, Any], *, reseal: bool = True) -> None:
    """Change manifest fields; with ``reseal`` the bundle_id is recomputed, so only the change is wrong."""
    path = bundle / MANIFEST
    data = json.loads(path.read_text())
    data.update(change)
    if reseal:
        body = {k: v for k, v in data.items() if k != "bundle_id"}
        data["bundle_id"] = sha256_json(body)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def forge_image_paths(bundle: Path, dest: Path, raw_paths: dict[int, bytes], *, row_group_size: int = 65_536) -> Path:
    """A correctly sealed but malicious copy of ``bundle``: some rows of images.parquet point elsewhere.

    The copy is re-finalised with shared.bundle.finalize_bundle, so every sha256 and the
    bundle_id are valid: only the safety checks of the reader can refuse those paths.
    With no ``raw_paths`` it is an honest copy whose images.parquet has other row groups.
    """
    manifest = read_manifest(bundle)
    work = dest.parent / f"{dest.name}.work"
    shutil.copytree(bundle, work)
    (work / MANIFEST).unlink()
    rows = pq.read_table(work / IMAGES).to_pylist()
    for image_id, raw in raw_paths.items():
        rows[image_id]["raw_path"] = raw
        rows[image_id]["path"] = raw.decode("utf-8", errors="replace")
    pq.write_table(pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), work / IMAGES, row_group_size=row_group_size)
    finalize_bundle(
        work,
        dest,
        spec=manifest.spec,
        blocks=manifest.blocks,
        pool_root=Path(manifest.pool_root),
        pool_fingerprint=manifest.pool_fingerprint,
        count=manifest.count,
        rejected_count=manifest.rejected_count,
        dim=manifest.dim,
        index=manifest.index,
        extra=manifest.extra,
    )
    return dest
