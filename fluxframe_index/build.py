"""ff-index build: a pool scan as the source of the one index pipeline (fluxframe_index.pipeline).

Shards stream to a staging folder beside the bundle, so memory does not grow
with the pool and a killed build resumes where it stopped. Any joblib backend
runs the chunks (loky on one machine, dask on a cluster).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fluxframe_index.assemble import RowRun, sort_key
from fluxframe_index.extract import ChunkStats, ChunkTask
from fluxframe_index.pipeline import Rows, RunSettings, Sealed, run_source
from fluxframe_index.scan import (
    IMAGE_EXTENSIONS,
    PoolEntry,
    ScanRejection,
    ScanResult,
    SkippedFolder,
    describe_unusable,
    scan_pool,
)
from fluxframe_index.seal import BundleDescription, BundleRequest
from fluxframe_index.shards import read_meta, read_shard, shard_rejections, shard_row_count
from fluxframe_index.staging import bundle_lock, discard_staging, staging_dir
from fluxframe_index.tasks import chunk_tasks
from fluxframe_index.timings import BuildTimings
from shared.bundle import Manifest, check_files, read_manifest
from shared.cli_support import progress_bar
from shared.errors import BundleError, InputError, StateError, UsageError
from shared.features.registry import create_extractor, method_info
from shared.hashing import sha256_json
from shared.images import DEFAULT_MAX_PIXELS
from shared.own_folders import fluxframe_folder_kind, is_inside
from shared.spec import FeatureSpec
from shared.tiles import DEFAULT_TILE_SIZE, TileSpec

__all__ = ["BuildOptions", "BuildResult", "build_bundle", "bundle_lock", "staging_dir"]


@dataclass(frozen=True)
class BuildOptions:
    spec: FeatureSpec
    jobs: int = 1
    chunk_size: int = 256
    limit: int | None = None
    index_kind: str = "flat"
    ivf_nlist: int | None = None
    backend: str = "loky"
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress: bool = False
    replace: bool = False  # replace a bundle of another feature spec at the destination
    tile_size: int | None = DEFAULT_TILE_SIZE  # atlas tile side for tile mode; None: no tile data
    # The neural model file resolve_model() chose; None: found in the model cache by spec.model_sha256.
    model_file: Path | None = None

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")
        if self.chunk_size < 1:
            raise UsageError(f"--chunk-size must be >= 1, got {self.chunk_size}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be >= 1, got {self.limit}")
        if self.index_kind not in ("flat", "ivf"):
            raise UsageError(f"--index must be flat or ivf, got {self.index_kind!r}")
        if self.ivf_nlist is not None and self.ivf_nlist < 1:
            raise UsageError(f"--ivf-nlist must be >= 1, got {self.ivf_nlist}")
        if self.tile_size is not None:
            try:
                TileSpec(size=self.tile_size)
            except ValueError as exc:
                raise UsageError(f"--tile-size: {exc}") from None

    @property
    def tiles(self) -> TileSpec | None:
        return TileSpec(size=self.tile_size) if self.tile_size is not None else None

    def request(self) -> BundleRequest:
        """What, besides spec and pool, decides the bundle's content (for the up-to-date check).

        A bundle written before tile mode has no "tiles" in its request, so it is not up to
        date: ``--update`` then adds its tile data and keeps its features.
        """
        return BundleRequest(limit=self.limit, index_kind=self.index_kind, ivf_nlist=self.ivf_nlist, tiles=self.tiles)

    def description(self, asset_dir: Path, scan: ScanResult, extra: dict[str, Any]) -> BundleDescription:
        """What the manifest says of a bundle of ``scan`` made with these options (a build or an update)."""
        spec = self.spec.canonical()
        return BundleDescription(
            spec=spec,
            blocks=tuple(create_extractor(spec, asset_dir).blocks),
            pool_root=scan.root,
            pool_fingerprint=scan.fingerprint(),
            request=self.request(),
            extra=extra,
        )

    def run_settings(self) -> RunSettings:
        return RunSettings(jobs=self.jobs, backend=self.backend, progress=self.progress)

    def chunk_tasks(
        self, entries: list[PoolEntry], root: Path, asset_dir: Path, shard_dir: Path, *, features: bool = True
    ) -> list[ChunkTask]:
        return chunk_tasks(
            entries,
            root,
            self.spec,
            asset_dir,
            shard_dir,
            chunk_size=self.chunk_size,
            max_pixels=self.max_pixels,
            jobs=self.jobs,
            tile_size=self.tile_size,
            features=features,
        )


@dataclass
class BuildResult:
    bundle: Path
    manifest: Manifest
    up_to_date: bool
    indexed: int
    rejected: list[ScanRejection]
    resumed_shards: int
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    skipped_folders: list[SkippedFolder] = field(default_factory=list)
    timings: BuildTimings = field(default_factory=BuildTimings)

    @classmethod
    def sealed(cls, dest: Path, sealed: Sealed, started: float, scan: ScanResult, timings: BuildTimings) -> BuildResult:
        """The result of a build or update that ran its source to a sealed bundle."""
        return cls(
            dest,
            sealed.manifest,
            False,
            sealed.count,
            sealed.rejected,
            sealed.resumed_shards,
            time.perf_counter() - started,
            timings.stage_seconds(),
            scan.skipped_folders,
            timings,
        )


def build_bundle(
    pool: Path,
    dest: Path,
    options: BuildOptions,
    *,
    on_chunk: Callable[[ChunkStats], None] | None = None,
) -> BuildResult:
    """Build (or resume, or confirm up to date) the bundle at ``dest`` from the images under ``pool``."""
    started = time.perf_counter()
    timings = BuildTimings(jobs=options.jobs)
    # Every refusal below comes before anything is written (the lock's folder included).
    refuse_bundle_inside_pool(pool, dest)
    # The scan reads only the pool, so a bad pool is reported as such even while another build holds the lock.
    with timings.busy("scan"):
        scan = scan_pool(pool, limit=options.limit)
    if not scan.entries:
        raise InputError(no_image_files_message(pool, scan))
    refuse_foreign_folder(Path(dest))
    dest = Path(dest).absolute()
    with bundle_lock(dest):
        spec = options.spec.canonical()
        current = current_manifest(dest)
        if current is not None and is_up_to_date(current, spec, scan.fingerprint(), options, pool_root=scan.root):
            discard_staging(staging_dir(dest))  # left by a build killed after its bundle was in place
            seconds = time.perf_counter() - started
            skipped = scan.skipped_folders
            return BuildResult(
                dest, current, True, current.count, [], 0, seconds, skipped_folders=skipped, timings=timings
            )
        if current is not None and current.spec_sha256 != spec.sha256() and not options.replace:
            refuse_other_spec(dest, current, spec)
        sealed = run_source(PoolSource(pool, scan, options), dest, options.run_settings(), timings, on_chunk)
    return BuildResult.sealed(dest, sealed, started, scan, timings)


class PoolSource:
    """Every file of a pool scan, extracted in chunks; the bundle's rows are the shards' in scan order."""

    kind = "build"

    def __init__(self, pool: Path, scan: ScanResult, options: BuildOptions) -> None:
        self.pool = pool
        self.scan = scan
        self.options = options
        self.spec = options.spec.canonical()
        self._tasks: list[ChunkTask] = []

    def plan(self) -> dict[str, Any]:
        return {
            "spec_sha256": self.spec.sha256(),
            "pool_fingerprint": self.scan.fingerprint(),
            "chunk_size": self.options.chunk_size,
            "entries": len(self.scan.entries),
            "max_pixels": self.options.max_pixels,
            "tile_size": self.options.tile_size,
        }

    def prepare_assets(self, asset_dir: Path) -> None:
        method_info(self.spec.method).prepare_assets(self.spec, asset_dir, self.options.model_file)

    def tasks(self, asset_dir: Path, shard_dir: Path) -> list[ChunkTask]:
        self._tasks = self.options.chunk_tasks(self.scan.entries, self.scan.root, asset_dir, shard_dir)
        return self._tasks

    def describe(self, asset_dir: Path) -> BundleDescription:
        return self.options.description(asset_dir, self.scan, {"plan_sha256": sha256_json(self.plan())})

    def rows(self, shard_dir: Path, dim: int) -> Rows:
        """The shards in entry order; one shard's table is in memory at a time, counts come from .npy headers."""
        tasks = self._tasks
        count = sum(shard_row_count(shard_dir, t.index) for t in tasks)
        rejected = [*self.scan.rejected]
        for task in tasks:
            rejected.extend(shard_rejections(read_meta(shard_dir, task.index)))
        rejected.sort(key=lambda r: sort_key(r.path))
        tiles, progress = self.options.tiles, self.options.progress

        def runs() -> Iterator[RowRun]:
            with progress_bar(len(tasks), "assemble", "shard", progress) as bar:
                for task in tasks:
                    yield read_shard(shard_dir, task.index, dim, tiles)
                    bar.update(1)

        return Rows(count, runs(), rejected)

    def nothing_usable(self, rejected: list[ScanRejection]) -> str:
        return (
            f"{self.pool}: none of the {len(self.scan.entries)} image files could be used; "
            f"{describe_unusable(rejected)}"
        )


def refuse_bundle_inside_pool(pool: Path, dest: Path) -> None:
    """A bundle inside its own pool would be scanned by the next build or update: refuse it."""
    if pool.is_dir() and is_inside(dest, pool):
        raise UsageError(f"{dest}: the bundle would be inside the pool {pool}; write it outside the pool")


def refuse_foreign_folder(dest: Path) -> None:
    """Building replaces the folder at ``dest`` whole: never a folder of someone else's files."""
    if dest.is_dir() and any(dest.iterdir()) and fluxframe_folder_kind(dest) != "bundle":
        raise StateError(
            f"{dest}: is a folder with files that is not a FluxFrame bundle; refusing to replace it "
            "(give a new or empty folder as BUNDLE)"
        )


def no_image_files_message(pool: Path, scan: ScanResult) -> str:
    looked_for = ", ".join(sorted(IMAGE_EXTENSIONS))
    message = f"{pool}: no image files found (looked for {looked_for})"
    if scan.rejected:
        message += f"; {describe_unusable(scan.rejected)}"
    if scan.skipped_folders:
        names = ", ".join(f"{f.path} ({f.kind})" for f in scan.skipped_folders[:5])
        message += f"; skipped FluxFrame's own folders: {names}"
    return message


def refuse_other_spec(dest: Path, current: Manifest, spec: FeatureSpec) -> None:
    """A bundle of another spec is replaced only on request: its renders would no longer open it."""
    old, new = current.spec.to_dict(), spec.to_dict()
    changes = ", ".join(f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in new if old.get(key) != new.get(key))
    raise StateError(
        f"{dest}: holds a bundle of other feature options ({changes}); pass --replace to replace it, "
        "or give another BUNDLE path"
    )


def current_manifest(dest: Path) -> Manifest | None:
    """The manifest of the bundle at ``dest`` if it is whole (every file present at its size), else None."""
    if not (dest / "manifest.json").exists():
        return None
    with contextlib.suppress(BundleError):
        manifest = read_manifest(dest)
        # A bundle missing a file or holding a truncated one is rebuilt, never declared up to date.
        check_files(dest, manifest, full=False)
        return manifest
    return None


def is_up_to_date(
    current: Manifest, spec: FeatureSpec, fingerprint: str, options: BuildOptions, *, pool_root: Path | None = None
) -> bool:
    """Same spec, same pool files, same request, and (when given) the same pool root.

    The root matters even when the files are identical: ff-render opens images under the
    manifest's pool_root, so a bundle kept for a moved or copied pool would point at the old place.
    """
    return (
        current.spec_sha256 == spec.sha256()
        and current.pool_fingerprint == fingerprint
        and current.extra.get("request") == options.request().to_dict()
        and (pool_root is None or current.pool_root == str(pool_root))
    )
