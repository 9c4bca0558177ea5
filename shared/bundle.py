"""Bundles: write them atomically, open them read-only and memory-mapped, verify them.

Layout (format version 2; version 1 bundles, which have no tile data, still open)::

    BUNDLE/manifest.json     what everything else is, with each file's size and sha256
    BUNDLE/images.parquet    id, path, raw_path (relative to the pool root), bytes, mtime_ns, width, height, sha256
    BUNDLE/rejected.parquet  path, reason, detail
    BUNDLE/vectors.npy       float32 [n, d], unit norm, opened with mmap_mode="r"
    BUNDLE/index.faiss       optional IVF index, opened with IO_FLAG_MMAP
    BUNDLE/projection.npy / model.onnx   assets the method needs
    BUNDLE/atlas.npy         uint8 [n, s, s, 3] BGR tiles (tile mode), opened with mmap_mode="r"
    BUNDLE/tiles.npy         float32 [n, d] tile colour-layout descriptors (shared.tiles), mmapped
    BUNDLE/tiles.faiss       optional L2 IVF index over tiles.npy (--index ivf), opened with IO_FLAG_MMAP

The manifest's "tiles" entry (version 2) describes atlas.npy and tiles.npy, or is null
when the bundle has none.

The bundle_id is the sha256 of the manifest's canonical JSON (without bundle_id),
and the manifest names every file's sha256, so the id pins every byte.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from shared import __version__
from shared.atomic import atomic_write_json, replace_folder
from shared.errors import BundleError, ImageDecodeError
from shared.features.base import Block, Extractor
from shared.features.registry import create_extractor
from shared.hashing import sha256_file, sha256_json
from shared.spec import FeatureSpec
from shared.tiles import TileSpec

FORMAT_VERSION = 2
# Version 1 is version 2 without the "tiles" entry: it opens, and has no tile data.
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
VECTORS = "vectors.npy"
IMAGES = "images.parquet"
REJECTED = "rejected.parquet"
INDEX = "index.faiss"
ATLAS = "atlas.npy"
TILES = "tiles.npy"
TILE_INDEX = "tiles.faiss"  # L2 IVF over tiles.npy, in bundles built with --index ivf
# How the last build, update or merge of the bundle went (stage timings): written beside the
# sealed files after the swap, never listed in the manifest, because it differs run to run
# while identical builds must seal identical bytes.
BUILD_SUMMARY = "build-summary.json"

IMAGES_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("path", pa.string()),  # for people and pandas; names that are not UTF-8 shown with U+FFFD
        ("raw_path", pa.binary()),  # the file system's exact bytes, what ff-render opens
        ("bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("sha256", pa.string()),
    ]
)
# What each image row says besides its id (the one list: build shards, update and merge all use it).
IMAGE_COLUMNS: tuple[str, ...] = tuple(name for name in IMAGES_SCHEMA.names if name != "id")
REJECTED_SCHEMA = pa.schema([("path", pa.string()), ("reason", pa.string()), ("detail", pa.string())])
# Row groups small enough that looking up a few paths by id reads little.
IMAGES_ROW_GROUP = 65_536
# Bytes of image paths (Arrow arrays of whole row groups) an opened bundle keeps in memory.
PATH_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class IndexInfo:
    kind: str = "flat"  # "flat": exact search over vectors.npy; "ivf": index.faiss
    nlist: int = 0
    default_nprobe: int = 0
    train_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "nlist": self.nlist,
            "default_nprobe": self.default_nprobe,
            "train_size": self.train_size,
        }


@dataclass(frozen=True)
class Manifest:
    format_version: int
    tool_version: str
    created_at: str
    spec: FeatureSpec
    spec_sha256: str
    blocks: tuple[Block, ...]
    pool_root: str
    pool_fingerprint: str
    count: int
    rejected_count: int
    dim: int
    index: IndexInfo
    files: dict[str, dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    bundle_id: str = ""
    tiles: TileSpec | None = None

    def body(self) -> dict[str, Any]:
        body = {
            "format_version": self.format_version,
            "tool_version": self.tool_version,
            "created_at": self.created_at,
            "spec": self.spec.to_dict(),
            "spec_sha256": self.spec_sha256,
            "blocks": [{"name": b.name, "dim": b.dim} for b in self.blocks],
            "pool_root": self.pool_root,
            "pool_fingerprint": self.pool_fingerprint,
            "count": self.count,
            "rejected_count": self.rejected_count,
            "dim": self.dim,
            "index": self.index.to_dict(),
            "files": self.files,
            "extra": self.extra,
        }
        if self.format_version >= 2:
            # Not in a version 1 body: its bundle_id was hashed without it.
            body["tiles"] = self.tiles.to_dict() if self.tiles is not None else None
        return body

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "bundle_id": self.bundle_id}


def display_path(rel: str) -> str:
    """A relative path as valid UTF-8 text (undecodable bytes become U+FFFD)."""
    return os.fsencode(rel).decode("utf-8", errors="replace")


def _safe_file_name(name: str, where: Path) -> str:
    """A manifest may only name plain files inside the bundle: no '..', no absolute paths, no folders."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or len(pure.parts) != 1 or name in (".", "..") or "\\" in name:
        raise BundleError(f"{where / MANIFEST}: refuses file name {name!r} (must be a plain name inside the bundle)")
    return name


def parse_manifest(path: Path, data: dict[str, Any]) -> Manifest:
    where = path.parent
    if not isinstance(data, dict):
        raise BundleError(f"{path}: not a bundle manifest")
    version = data.get("format_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise BundleError(
            f"{path}: bundle format version {version!r} is not supported (this FluxFrame reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); rebuild it with this version of ff-index"
        )
    # The seal is checked on the JSON as read, before any field is interpreted: a changed byte
    # anywhere (a key, a value) is reported as what it is, tampering, not as whatever field
    # check it happens to trip first (an unknown method would otherwise read as a usage error).
    if sha256_json({k: v for k, v in data.items() if k != "bundle_id"}) != data.get("bundle_id"):
        raise BundleError(f"{path}: bundle_id does not match the manifest's content (tampered?)")
    try:
        spec = FeatureSpec.from_dict(dict(data["spec"]))
        files = {_safe_file_name(str(k), where): dict(v) for k, v in dict(data["files"]).items()}
        for name, info in files.items():
            if not isinstance(info.get("bytes"), int) or not isinstance(info.get("sha256"), str):
                raise BundleError(f"{path}: entry for {name} lacks bytes/sha256")
        index_data = dict(data.get("index") or {})
        manifest = Manifest(
            format_version=int(version),
            tool_version=str(data["tool_version"]),
            created_at=str(data["created_at"]),
            spec=spec,
            spec_sha256=str(data["spec_sha256"]),
            blocks=tuple(Block(str(b["name"]), int(b["dim"])) for b in data["blocks"]),
            pool_root=str(data["pool_root"]),
            pool_fingerprint=str(data["pool_fingerprint"]),
            count=int(data["count"]),
            rejected_count=int(data["rejected_count"]),
            dim=int(data["dim"]),
            index=IndexInfo(
                kind=str(index_data.get("kind", "flat")),
                nlist=int(index_data.get("nlist", 0)),
                default_nprobe=int(index_data.get("default_nprobe", 0)),
                train_size=int(index_data.get("train_size", 0)),
            ),
            files=files,
            extra=dict(data.get("extra") or {}),
            bundle_id=str(data["bundle_id"]),
            tiles=TileSpec.from_dict(dict(data["tiles"])) if version >= 2 and data["tiles"] is not None else None,
        )
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: malformed manifest ({type(exc).__name__}: {exc})") from None
    if manifest.spec_sha256 != spec.sha256():
        raise BundleError(f"{path}: spec_sha256 does not match the spec it describes (tampered?)")
    if sha256_json(manifest.body()) != manifest.bundle_id:
        raise BundleError(f"{path}: bundle_id does not match the manifest's content (tampered?)")
    for required in (VECTORS, IMAGES, REJECTED):
        if required not in files:
            raise BundleError(f"{path}: manifest lists no {required}")
    if manifest.tiles is not None and not {ATLAS, TILES} <= files.keys():
        raise BundleError(f"{path}: manifest describes tile data but lists no {ATLAS} and {TILES}")
    if manifest.index.kind not in ("flat", "ivf") or (manifest.index.kind == "ivf" and INDEX not in files):
        raise BundleError(f"{path}: unknown or incomplete index kind {manifest.index.kind!r}")
    return manifest


def read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST
    if not bundle_dir.exists():
        raise BundleError(f"{bundle_dir}: no such bundle")
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: not a FluxFrame bundle (no {MANIFEST})")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    return parse_manifest(path, data)


def check_files(bundle_dir: Path, manifest: Manifest, full: bool) -> None:
    """Every listed file present with its size; with ``full``, its sha256 too. Raises naming the file."""
    for name, info in sorted(manifest.files.items()):
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise BundleError(
                f"{path}: size {size} differs from the manifest's {info['bytes']} (tampered or truncated)"
            )
        if full and sha256_file(path) != info["sha256"]:
            raise BundleError(f"{path}: sha256 differs from the manifest (tampered or corrupt)")


def verify_bundle(bundle_dir: Path) -> Manifest:
    manifest = read_manifest(bundle_dir)
    check_files(bundle_dir, manifest, full=True)
    return manifest


def finalize_bundle(
    work_dir: Path,
    dest: Path,
    *,
    spec: FeatureSpec,
    blocks: tuple[Block, ...],
    pool_root: Path,
    pool_fingerprint: str,
    count: int,
    rejected_count: int,
    dim: int,
    index: IndexInfo,
    extra: dict[str, Any] | None = None,
    tiles: TileSpec | None = None,
) -> Manifest:
    """Hash every file in ``work_dir``, write the manifest, and move the folder to ``dest`` atomically.

    An existing ``dest`` is replaced only after the new bundle is complete on disk.
    """
    files = {}
    for path in sorted(work_dir.iterdir()):
        if path.is_file() and path.name not in (MANIFEST, BUILD_SUMMARY) and not path.name.startswith("."):
            files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        tool_version=__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        spec=spec,
        spec_sha256=spec.sha256(),
        blocks=blocks,
        pool_root=str(pool_root),
        pool_fingerprint=pool_fingerprint,
        count=count,
        rejected_count=rejected_count,
        dim=dim,
        index=index,
        files=files,
        extra=extra or {},
        tiles=tiles,
    )
    manifest = Manifest(**{**manifest.__dict__, "bundle_id": sha256_json(manifest.body())})
    atomic_write_json(work_dir / MANIFEST, manifest.to_dict())
    replace_folder(work_dir, dest)
    return manifest


class Bundle:
    """An opened bundle: manifest, memory-mapped vectors, lazily-read metadata."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        # raw_path columns of recently used row groups, kept as Arrow arrays (see _row_group_paths).
        self._row_groups: OrderedDict[int, pa.BinaryArray] = OrderedDict()
        self._row_group_bytes = 0

    @property
    def spec(self) -> FeatureSpec:
        return self.manifest.spec

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def count(self) -> int:
        return self.manifest.count

    @property
    def pool_root(self) -> Path:
        return Path(self.manifest.pool_root)

    @cached_property
    def vectors(self) -> NDArray[np.float32]:
        """float32 [n, d], memory-mapped read-only: no copy in RAM, pages shared between renders."""
        try:
            array = np.load(self.path / VECTORS, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{self.path / VECTORS}: unreadable ({exc})") from None
        if array.dtype != np.float32 or array.shape != (self.count, self.manifest.dim):
            raise BundleError(
                f"{self.path / VECTORS}: shape {array.shape} {array.dtype} does not match the manifest "
                f"({self.count}, {self.manifest.dim}) float32"
            )
        return array  # type: ignore[no-any-return]

    @property
    def has_tiles(self) -> bool:
        return self.manifest.tiles is not None

    def tile_spec(self) -> TileSpec:
        """The bundle's tile data description; a one-line BundleError naming the fix when it has none."""
        if self.manifest.tiles is None:
            raise BundleError(
                f"{self.path}: this bundle has no tile data (built before tile mode); add it with "
                f"`ff-index build POOL {self.path} --update` (features are kept, only tiles are computed)"
            )
        self.manifest.tiles.check_supported()
        return self.manifest.tiles

    @property
    def tile_index_path(self) -> Path | None:
        """The IVF index over the tile descriptors, when the bundle has one (built with --index ivf)."""
        self.tile_spec()
        return self.path / TILE_INDEX if TILE_INDEX in self.manifest.files else None

    @cached_property
    def atlas(self) -> NDArray[np.uint8]:
        """uint8 [n, s, s, 3] BGR atlas tiles, memory-mapped read-only."""
        spec = self.tile_spec()
        return self._mapped(ATLAS, np.dtype(np.uint8), (self.count, spec.size, spec.size, 3))

    @cached_property
    def tile_descriptors(self) -> NDArray[np.float32]:
        """float32 [n, d] colour-layout descriptors of the atlas tiles (shared.tiles), memory-mapped."""
        spec = self.tile_spec()
        return self._mapped(TILES, np.dtype(np.float32), (self.count, spec.dim))

    def _mapped(self, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> NDArray[Any]:
        try:
            array = np.load(self.path / name, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{self.path / name}: unreadable ({exc})") from None
        if array.dtype != dtype or array.shape != shape:
            raise BundleError(
                f"{self.path / name}: shape {array.shape} {array.dtype} does not match the manifest ({shape} {dtype})"
            )
        return array  # type: ignore[no-any-return]

    def extractor(self) -> Extractor:
        extractor = create_extractor(self.spec, self.path)
        if tuple(extractor.blocks) != self.manifest.blocks:
            raise BundleError(f"{self.path}: the feature blocks of this FluxFrame differ from the bundle's")
        return extractor

    def read_images_table(self, columns: list[str] | None = None) -> pa.Table:
        with _parquet_errors(self.path / IMAGES):
            return pq.read_table(self.path / IMAGES, columns=columns)

    def read_rejected_table(self) -> pa.Table:
        with _parquet_errors(self.path / REJECTED):
            return pq.read_table(self.path / REJECTED)

    def check_structure(self) -> None:
        """Cheap checks for an unverified open: Parquet footers, row count, vectors header and shape.

        They read a few kB whatever the bundle's size; damage inside the data is found by
        the sha256 check only.
        """
        for name in (IMAGES, REJECTED):
            with _parquet_errors(self.path / name):
                rows = pq.ParquetFile(self.path / name).metadata.num_rows
            if name == IMAGES and rows != self.count:
                raise BundleError(f"{self.path / name}: {rows} rows, the manifest says {self.count}")
        _ = self.vectors
        if self.has_tiles:
            _ = self.atlas, self.tile_descriptors

    def relative_paths(self, ids: NDArray[np.int64] | list[int]) -> list[str]:
        """Pool-relative paths of image ids, reading only the Parquet row groups that hold them."""
        out = []
        for image_id in (int(i) for i in ids):
            if not 0 <= image_id < self.count:
                raise BundleError(f"{self.path}: image id {image_id} out of range 0..{self.count - 1}")
            group, row = divmod(image_id, IMAGES_ROW_GROUP)
            raw = self._row_group_paths(group)[row].as_py()
            out.append(os.fsdecode(raw))
        return out

    def _row_group_paths(self, group: int) -> pa.BinaryArray:
        """One row group's raw_path column, cached up to PATH_CACHE_BYTES.

        Only the paths asked for are decoded to str: decoding a whole 65,536-row group per
        lookup made naming 1,000 random images of a 1M bundle take 6-8 s (measured); the
        Arrow column costs ~1.8 MB a group, so the whole of a 1M bundle fits the cache.
        """
        if group in self._row_groups:
            self._row_groups.move_to_end(group)
            return self._row_groups[group]
        with _parquet_errors(self.path / IMAGES):
            table = pq.ParquetFile(self.path / IMAGES).read_row_group(group, columns=["raw_path"])
        column = table.column("raw_path").combine_chunks()
        self._row_groups[group] = column
        self._row_group_bytes += column.nbytes
        while self._row_group_bytes > PATH_CACHE_BYTES and len(self._row_groups) > 1:
            _, dropped = self._row_groups.popitem(last=False)
            self._row_group_bytes -= dropped.nbytes
        return column

    def image_paths(self, ids: NDArray[np.int64] | list[int], pool_root: Path | None = None) -> list[Path]:
        """Absolute paths of image ids; a path that would leave the pool root is refused."""
        root = (pool_root or self.pool_root).resolve()
        out = []
        for rel in self.relative_paths(ids):
            pure = PurePosixPath(rel)
            # Empty names the root itself, and a NUL byte makes open() raise ValueError: neither is a pool file.
            if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\0" in rel:
                raise ImageDecodeError("outside_pool", f"{rel!r} is not a file inside the pool root {root}")
            out.append(root.joinpath(*pure.parts))
        return out


@contextlib.contextmanager
def _parquet_errors(path: Path) -> Iterator[None]:
    """pyarrow's errors on a damaged file (ArrowInvalid is a ValueError, ArrowIOError an OSError) as a BundleError."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: unreadable ({exc}); check the bundle with ff-index verify") from None


def open_bundle(path: Path, *, verify: bool = True) -> Bundle:
    """Open a bundle read-only. ``verify`` checks every file's sha256 (slow for huge bundles);
    without it, sizes and the files' structure (headers, footers) are still checked."""
    path = Path(path)
    manifest = read_manifest(path)
    check_files(path, manifest, full=verify)
    bundle = Bundle(path, manifest)
    if not verify:
        bundle.check_structure()
    return bundle
