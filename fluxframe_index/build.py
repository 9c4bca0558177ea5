"""ff-index build: scan -> chunked parallel extraction into shards -> one bundle, atomically.

Shards stream to a staging folder beside the bundle, so memory does not grow
with the pool and a killed build resumes where it stopped. Any joblib backend
runs the chunks (loky on one machine, dask on a cluster).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from joblib import Parallel, delayed, parallel_config

from fluxframe_index.assemble import RowRun, write_rejected, write_rows
from fluxframe_index.extract import ChunkStats, ChunkTask, extract_chunk, shard_paths, tile_shard_paths
from fluxframe_index.ivf import build_ivf_index
from fluxframe_index.scan import ScanRejection, ScanResult, SkippedFolder, describe_unusable, scan_pool
from shared.atomic import atomic_write_json
from shared.bundle import (
    IMAGE_COLUMNS,
    INDEX,
    REJECTED,
    TILE_INDEX,
    TILES,
    VECTORS,
    IndexInfo,
    Manifest,
    check_files,
    finalize_bundle,
    read_manifest,
)
from shared.cli_support import progress_bar
from shared.errors import BundleError, InputError, OutputError, StateError, UsageError
from shared.features.base import Block
from shared.features.registry import create_extractor, method_info
from shared.hashing import sha256_json
from shared.images import DEFAULT_MAX_PIXELS
from shared.lock import ExclusiveLock
from shared.own_folders import fluxframe_folder_kind, is_inside
from shared.spec import FeatureSpec
from shared.tiles import DEFAULT_TILE_SIZE, TileSpec

PLAN = "plan.json"


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

    def request(self) -> dict[str, Any]:
        """What, besides spec and pool, decides the bundle's content (for the up-to-date check).

        A bundle written before tile mode has no "tiles" here, so it is not up to date:
        ``--update`` then adds its tile data and keeps its features.
        """
        tiles = self.tiles
        return {
            "limit": self.limit,
            "index": self.index_kind,
            "ivf_nlist": self.ivf_nlist,
            "tiles": tiles.to_dict() if tiles is not None else None,
        }


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


def staging_dir(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.partial"


def bundle_lock(dest: Path) -> ExclusiveLock:
    """One writer per bundle path: two builds would share (and wreck) one staging folder."""
    dest = Path(dest).absolute()
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"{dest}: exists and is not a folder")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None
    return ExclusiveLock(
        dest.parent / f".{dest.name}.lock", tool="ff-index", guarded=dest, advice="wait for that build to finish"
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
    # Every refusal below comes before anything is written (the lock's folder included).
    refuse_bundle_inside_pool(pool, dest)
    # The scan reads only the pool, so a bad pool is reported as such even while another build holds the lock.
    scan = scan_pool(pool, limit=options.limit)
    if not scan.entries:
        raise InputError(no_image_files_message(pool, scan))
    refuse_foreign_folder(Path(dest))
    with bundle_lock(dest):
        return _build_bundle(scan, pool, Path(dest).absolute(), options, on_chunk, started)


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
    looked_for = ", ".join(sorted(_extensions()))
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


def _build_bundle(
    scan: ScanResult,
    pool: Path,
    dest: Path,
    options: BuildOptions,
    on_chunk: Callable[[ChunkStats], None] | None,
    started: float,
) -> BuildResult:
    spec = options.spec.canonical()
    info = method_info(spec.method)
    fingerprint = scan.fingerprint()
    current = _current_manifest(dest)
    if current is not None and _is_up_to_date(current, spec, fingerprint, options, pool_root=scan.root):
        discard_staging(staging_dir(dest))  # left by a build killed after its bundle was in place
        return BuildResult(
            dest,
            current,
            True,
            current.count,
            [],
            0,
            time.perf_counter() - started,
            skipped_folders=scan.skipped_folders,
        )
    if current is not None and current.spec_sha256 != spec.sha256() and not options.replace:
        refuse_other_spec(dest, current, spec)

    stage = staging_dir(dest)
    plan = {
        "spec_sha256": spec.sha256(),
        "pool_fingerprint": fingerprint,
        "chunk_size": options.chunk_size,
        "entries": len(scan.entries),
        "max_pixels": options.max_pixels,
        "tile_size": options.tile_size,
    }
    prepare_staging(stage, plan)
    shard_dir = stage / "shards"
    asset_dir = stage / "assets"
    asset_dir.mkdir(exist_ok=True)
    info.prepare_assets(spec, asset_dir, options.model_file)

    tasks = chunk_tasks(scan, spec, asset_dir, shard_dir, options)
    pending = [t for t in tasks if not shard_paths(shard_dir, t.index)[1].exists()]
    resumed = len(tasks) - len(pending)
    done_images = sum(len(t.paths) for t in tasks if t not in pending)
    stage_seconds = {"read": 0.0, "decode": 0.0, "features": 0.0, "tiles": 0.0, "write": 0.0}
    bar = progress_bar(len(scan.entries), "extract", "img", options.progress, initial=done_images)
    with bar:
        for stats in run_chunks(pending, options):
            bar.update(stats.images)
            stage_seconds["read"] += stats.read_s
            stage_seconds["decode"] += stats.decode_s
            stage_seconds["features"] += stats.feature_s
            stage_seconds["write"] += stats.write_s
            stage_seconds["tiles"] += stats.tile_s
            if on_chunk is not None:
                on_chunk(stats)

    t_final = time.perf_counter()
    extractor = create_extractor(spec, asset_dir)
    dim = sum(b.dim for b in extractor.blocks)
    work = stage / "bundle"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    for asset in asset_dir.iterdir():
        shutil.copy2(asset, work / asset.name)
    count, decode_rejected = _assemble(tasks, shard_dir, work, dim, options.tiles, options.progress)
    rejected = sorted([*scan.rejected, *decode_rejected], key=lambda r: os.fsencode(r.path))
    if count == 0:
        discard_staging(stage)  # a refused build leaves nothing behind
        raise InputError(
            f"{pool}: none of the {len(scan.entries)} image files could be used; {describe_unusable(rejected)}"
        )
    manifest = seal_bundle(
        work,
        dest,
        spec=spec,
        blocks=tuple(extractor.blocks),
        pool_root=scan.root,
        pool_fingerprint=fingerprint,
        count=count,
        rejected=rejected,
        options=options,
        extra={"plan_sha256": sha256_json(plan)},
    )
    stage_seconds["finalize"] = time.perf_counter() - t_final
    discard_staging(stage)
    seconds = time.perf_counter() - started
    return BuildResult(dest, manifest, False, count, rejected, resumed, seconds, stage_seconds, scan.skipped_folders)


def seal_bundle(
    work: Path,
    dest: Path,
    *,
    spec: FeatureSpec,
    blocks: tuple[Block, ...],
    pool_root: Path,
    pool_fingerprint: str,
    count: int,
    rejected: list[ScanRejection],
    options: BuildOptions,
    extra: dict[str, Any],
) -> Manifest:
    """Finish an assembled bundle folder: rejected.parquet, the IVF index if asked, manifest, swap into ``dest``."""
    write_rejected(work / REJECTED, rejected)
    index_info = IndexInfo()
    if options.index_kind == "ivf":
        index_info = build_ivf_index(work / VECTORS, work / INDEX, nlist=options.ivf_nlist, progress=options.progress)
        if options.tiles is not None:
            build_tile_ivf(work, options.progress)
    return finalize_bundle(
        work,
        dest,
        tiles=options.tiles,
        spec=spec,
        blocks=blocks,
        pool_root=pool_root,
        pool_fingerprint=pool_fingerprint,
        count=count,
        rejected_count=len(rejected),
        dim=sum(b.dim for b in blocks),
        index=index_info,
        extra={"request": options.request(), **extra},
    )


def build_tile_ivf(work: Path, progress: bool) -> IndexInfo:
    """An L2 IVF index over work/tiles.npy: a 1M-image render's 14,400 cell queries a second need it."""
    return build_ivf_index(work / TILES, work / TILE_INDEX, nlist=None, progress=progress, metric=faiss.METRIC_L2)


def _extensions() -> list[str]:
    from fluxframe_index.scan import IMAGE_EXTENSIONS

    return list(IMAGE_EXTENSIONS)


def _current_manifest(dest: Path) -> Manifest | None:
    """The manifest of the bundle at ``dest`` if it is whole (every file present at its size), else None."""
    if not (dest / "manifest.json").exists():
        return None
    with contextlib.suppress(BundleError):
        manifest = read_manifest(dest)
        # A bundle missing a file or holding a truncated one is rebuilt, never declared up to date.
        check_files(dest, manifest, full=False)
        return manifest
    return None


def _is_up_to_date(
    current: Manifest, spec: FeatureSpec, fingerprint: str, options: BuildOptions, *, pool_root: Path | None = None
) -> bool:
    """Same spec, same pool files, same request, and (when given) the same pool root.

    The root matters even when the files are identical: ff-render opens images under the
    manifest's pool_root, so a bundle kept for a moved or copied pool would point at the old place.
    """
    return (
        current.spec_sha256 == spec.sha256()
        and current.pool_fingerprint == fingerprint
        and current.extra.get("request") == options.request()
        and (pool_root is None or current.pool_root == str(pool_root))
    )


def prepare_staging(stage: Path, plan: dict[str, Any]) -> None:
    """Reuse a staging folder only if it was made for exactly this plan; otherwise start clean."""
    plan_path = stage / PLAN
    if stage.exists():
        try:
            import json

            same = json.loads(plan_path.read_text()) == plan
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(stage)
    if not stage.exists():
        stage.mkdir(parents=True)
        (stage / "shards").mkdir()
        atomic_write_json(plan_path, plan)


def discard_staging(stage: Path) -> None:
    """Remove a staging folder so that no kill can leave part of it trusted.

    The plan goes first: without it the next run starts clean, so a removal cut short
    (shard metadata left, its vectors gone) is never mistaken for finished shards.
    """
    (stage / PLAN).unlink(missing_ok=True)
    shutil.rmtree(stage, ignore_errors=True)


def chunk_tasks(
    scan: ScanResult, spec: FeatureSpec, asset_dir: Path, shard_dir: Path, options: BuildOptions
) -> list[ChunkTask]:
    spec_json = spec.to_dict()
    tasks = []
    for index in range(math.ceil(len(scan.entries) / options.chunk_size)):
        first = index * options.chunk_size
        chunk = scan.entries[first : first + options.chunk_size]
        tasks.append(
            ChunkTask(
                index=index,
                first_entry=first,
                paths=[e.path for e in chunk],
                sizes=[e.size for e in chunk],
                mtimes=[e.mtime_ns for e in chunk],
                pool_root=str(scan.root),
                spec_json=spec_json,
                asset_dir=str(asset_dir),
                shard_dir=str(shard_dir),
                max_pixels=options.max_pixels,
                jobs=options.jobs,
                tile_size=options.tile_size or 0,
            )
        )
    return tasks


def run_chunks(tasks: list[ChunkTask], options: BuildOptions) -> Iterator[ChunkStats]:
    if not tasks:
        return
    if options.jobs == 1 and options.backend == "loky":
        # In-process: no worker start-up, and the same code path as the workers run.
        for task in tasks:
            yield extract_chunk(task)
        return
    parallel = _parallel(options)
    with workers_ignore_sigint():
        # Calling parallel starts the workers. A Ctrl-C goes to the whole process group: it must
        # stop this process (which stops the workers and keeps finished shards), never reach a
        # worker still starting up, which would print its own KeyboardInterrupt traceback.
        results = parallel(delayed(extract_chunk)(task) for task in tasks)
    yield from results


@contextlib.contextmanager
def workers_ignore_sigint() -> Iterator[None]:
    """Processes started inside the block ignore SIGINT; this one still gets it, when the block ends.

    An ignored signal stays ignored across exec, and Python then installs no KeyboardInterrupt
    handler. Blocking SIGINT here meanwhile keeps a Ctrl-C pressed during the block pending
    (Linux never discards a blocked signal), so it is delivered as soon as the block ends.
    """
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _parallel(options: BuildOptions) -> Parallel:
    if options.backend != "dask":
        return Parallel(n_jobs=options.jobs, backend=options.backend, return_as="generator_unordered", batch_size=1)
    # Not Parallel(backend="dask"): joblib 1.6 then passes its nesting_level on to every Dask task as a
    # keyword argument, and each chunk fails on the worker; a backend made by parallel_config does not.
    try:
        with parallel_config(backend="dask"):
            return Parallel(n_jobs=-1, return_as="generator_unordered", batch_size=1)
    except ValueError:
        raise UsageError(
            "--backend dask needs a Dask client: run the build inside fluxframe_index.distributed.dask_backend"
        ) from None


def _assemble(
    tasks: list[ChunkTask], shard_dir: Path, work: Path, dim: int, tiles: TileSpec | None, progress: bool
) -> tuple[int, list[ScanRejection]]:
    """Stream the shards, in entry order, into the bundle's vectors and image table.

    One shard's table is in memory at a time; the row count comes from the shards' .npy headers.
    """
    count = sum(_shard_rows(shard_paths(shard_dir, t.index)[0]) for t in tasks)
    rejected: list[ScanRejection] = []

    def runs() -> Iterator[RowRun]:
        with progress_bar(len(tasks), "assemble", "shard", progress) as bar:
            for task in tasks:
                meta = pq.read_table(shard_paths(shard_dir, task.index)[1])
                run, bad = shard_run(shard_dir, task.index, meta, dim, tiles)
                rejected.extend(bad)
                yield run
                bar.update(1)

    write_rows(work, dim, count, runs(), tiles)
    return count, rejected


def _shard_rows(path: Path) -> int:
    shard = np.load(path, mmap_mode="r", allow_pickle=False)
    return int(shard.shape[0])


def shard_run(
    shard_dir: Path, index: int, meta: pa.Table, dim: int, tiles: TileSpec | None = None
) -> tuple[RowRun, list[ScanRejection]]:
    """One shard's accepted rows as a RowRun (with their tile data when ``tiles``), and its rejected files."""
    shard = np.load(shard_paths(shard_dir, index)[0], allow_pickle=False)
    statuses = meta.column("status").to_pylist()
    ok_rows = [i for i, s in enumerate(statuses) if s == "ok"]
    if shard.shape != (len(ok_rows), dim):
        raise BundleError(f"shard {index} has shape {shard.shape}, expected ({len(ok_rows)}, {dim}); rebuild")
    cols = {name: meta.column(name).to_pylist() for name in (*IMAGE_COLUMNS, "detail")}
    bad = [
        ScanRejection(os.fsdecode(cols["raw_path"][i]), status, cols["detail"][i])
        for i, status in enumerate(statuses)
        if status != "ok"
    ]
    run = RowRun(shard, {name: [cols[name][i] for i in ok_rows] for name in IMAGE_COLUMNS})
    if tiles is not None:
        run.atlas, run.tiles = load_tile_shard(shard_dir, index, len(ok_rows), tiles)
    return run, bad


def load_tile_shard(
    shard_dir: Path, index: int, rows: int, tiles: TileSpec
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """A shard's atlas tiles and descriptors, checked against the rows its metadata accepted."""
    atlas_path, tiles_path = tile_shard_paths(shard_dir, index)
    atlas = np.load(atlas_path, allow_pickle=False)
    descriptors = np.load(tiles_path, allow_pickle=False)
    if atlas.shape != (rows, tiles.size, tiles.size, 3) or descriptors.shape != (rows, tiles.dim):
        raise BundleError(f"shard {index} has tile data of shapes {atlas.shape} {descriptors.shape}; rebuild")
    return atlas, descriptors
