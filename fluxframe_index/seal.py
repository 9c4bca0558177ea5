"""The one sealing step of build, update and merge: rejected table, optional IVF indexes, manifest, swap in.

What a bundle was asked to be (its request) is described here once, so the up-to-date
check of a build and a merge's manifest say it the same way.

How long each stage took is kept out of the sealed content: two builds of the same pool
give manifests that differ only in created_at. The timings travel in the BuildResult
(ff-index build --timings prints them) and in the build summary written beside the
sealed files once they are in place (fluxframe_index.summary).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss

from fluxframe_index.assemble import write_rejected
from fluxframe_index.ivf import build_ivf_index
from fluxframe_index.scan import ScanRejection
from fluxframe_index.timings import BuildTimings
from shared.bundle import INDEX, REJECTED, TILE_INDEX, TILES, VECTORS, IndexInfo, Manifest, finalize_bundle
from shared.features.base import Block
from shared.spec import FeatureSpec
from shared.tiles import TileSpec


@dataclass(frozen=True)
class BundleRequest:
    """What, besides spec and pool, decides a bundle's content (compared by the up-to-date check)."""

    limit: int | None = None
    index_kind: str = "flat"
    ivf_nlist: int | None = None
    tiles: TileSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "index": self.index_kind,
            "ivf_nlist": self.ivf_nlist,
            "tiles": self.tiles.to_dict() if self.tiles is not None else None,
        }


@dataclass(frozen=True)
class BundleDescription:
    """Everything the manifest says that the rows do not."""

    spec: FeatureSpec
    blocks: tuple[Block, ...]
    pool_root: Path
    pool_fingerprint: str
    request: BundleRequest
    extra: dict[str, Any] = field(default_factory=dict)


def seal_bundle(
    work: Path,
    dest: Path,
    description: BundleDescription,
    *,
    count: int,
    rejected: list[ScanRejection],
    timings: BuildTimings,
    progress: bool = False,
) -> Manifest:
    """Finish an assembled bundle folder: rejected.parquet, the IVF indexes if asked, manifest, swap into ``dest``."""
    request = description.request
    with timings.busy("seal"):
        write_rejected(work / REJECTED, rejected)
        index_info = IndexInfo()
        if request.index_kind == "ivf":
            index_info = build_ivf_index(work / VECTORS, work / INDEX, nlist=request.ivf_nlist, progress=progress)
            if request.tiles is not None:
                build_tile_ivf(work, progress)
    with timings.busy("seal"):
        return finalize_bundle(
            work,
            dest,
            tiles=request.tiles,
            spec=description.spec,
            blocks=description.blocks,
            pool_root=description.pool_root,
            pool_fingerprint=description.pool_fingerprint,
            count=count,
            rejected_count=len(rejected),
            dim=sum(b.dim for b in description.blocks),
            index=index_info,
            extra={"request": request.to_dict(), **description.extra},
        )


def build_tile_ivf(work: Path, progress: bool) -> IndexInfo:
    """An L2 IVF index over work/tiles.npy: a 1M-image render's 14,400 cell queries a second need it."""
    return build_ivf_index(work / TILES, work / TILE_INDEX, nlist=None, progress=progress, metric=faiss.METRIC_L2)
