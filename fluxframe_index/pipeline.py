"""One pipeline for build, update and merge: a source's chunk tasks -> runner -> shard writer -> seal.

Shaped like clip-retrieval's reader / mapper / writer / runner: a :class:`Source` says what
to extract (a pool scan, an update's changed files, nothing for a merge) and which rows the
bundle gets in which order; this module runs the tasks (joblib backend, resumable shards),
streams the rows into the bundle's files, and seals it. Every stage is timed, and the timings are
written beside the sealed bundle as its build summary (fluxframe_index.summary).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fluxframe_index.assemble import RowRun, write_rows
from fluxframe_index.extract import ChunkStats, ChunkTask
from fluxframe_index.runner import run_tasks
from fluxframe_index.scan import ScanRejection
from fluxframe_index.seal import BundleDescription, seal_bundle
from fluxframe_index.staging import discard_staging, fresh_work_dir, prepare_staging, staging_dir
from fluxframe_index.summary import write_build_summary
from fluxframe_index.timings import BuildTimings
from shared.bundle import Manifest
from shared.errors import InputError


@dataclass
class Rows:
    """The bundle's rows in id order, streamed one run at a time."""

    count: int
    runs: Iterable[RowRun]
    rejected: list[ScanRejection]  # every file left out, in path order
    # Files written beside the rows once they are all written (an update's id remap).
    write_extra: Callable[[Path], None] | None = None


class Source(Protocol):
    kind: str  # "build", "update" or "merge": named in the bundle's build summary

    def plan(self) -> dict[str, Any]:
        """What the staging folder is made for: a folder left by another plan is discarded, not resumed."""
        ...

    def prepare_assets(self, asset_dir: Path) -> None:
        """Put the method's files (projection, model) where the workers and the bundle find them."""
        ...

    def tasks(self, asset_dir: Path, shard_dir: Path) -> list[ChunkTask]:
        """The chunks to extract (shards already complete are skipped by the runner)."""
        ...

    def describe(self, asset_dir: Path) -> BundleDescription: ...

    def rows(self, shard_dir: Path, dim: int) -> Rows: ...

    def nothing_usable(self, rejected: list[ScanRejection]) -> str:
        """The error message when no row is left."""
        ...


@dataclass
class Sealed:
    manifest: Manifest
    count: int
    rejected: list[ScanRejection]
    resumed_shards: int


@dataclass(frozen=True)
class RunSettings:
    jobs: int = 1
    backend: str = "loky"
    progress: bool = False


def run_source(
    source: Source,
    dest: Path,
    settings: RunSettings,
    timings: BuildTimings,
    on_chunk: Callable[[ChunkStats], None] | None = None,
) -> Sealed:
    """Extract what ``source`` asks for, write its rows and seal the bundle at ``dest`` (the caller holds its lock)."""
    stage = staging_dir(dest)
    prepare_staging(stage, source.plan())
    shard_dir, asset_dir = stage / "shards", stage / "assets"
    asset_dir.mkdir(exist_ok=True)
    source.prepare_assets(asset_dir)
    tasks = source.tasks(asset_dir, shard_dir)
    resumed = run_tasks(
        tasks,
        jobs=settings.jobs,
        backend=settings.backend,
        progress=settings.progress,
        timings=timings,
        on_chunk=on_chunk,
    )
    description = source.describe(asset_dir)
    dim = sum(b.dim for b in description.blocks)
    with timings.busy("write"):
        work = fresh_work_dir(stage, asset_dir)
        rows = source.rows(shard_dir, dim)
        if rows.count == 0:
            discard_staging(stage)  # a refused build leaves nothing behind
            raise InputError(source.nothing_usable(rows.rejected))
        write_rows(work, dim, rows.count, rows.runs, description.request.tiles)
        if rows.write_extra is not None:
            rows.write_extra(work)
    manifest = seal_bundle(
        work,
        dest,
        description,
        count=rows.count,
        rejected=rows.rejected,
        timings=timings,
        progress=settings.progress,
    )
    discard_staging(stage)
    write_build_summary(dest, manifest, timings, kind=source.kind, rejected=len(rows.rejected), resumed_shards=resumed)
    return Sealed(manifest, rows.count, rows.rejected, resumed)
