"""The bundle's build summary: how its last build, update or merge went, stage by stage.

It lives beside the sealed files as BUILD_SUMMARY (shared.bundle) and is written after
the swap, so it is outside the manifest and the bundle_id: two identical builds seal
byte-identical files while their timings differ. It names the bundle_id it describes,
so a summary left by an earlier run (a kill between the swap and this write) is told
apart from a current one instead of being trusted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fluxframe_index.timings import BuildTimings
from shared.atomic import atomic_write_json
from shared.bundle import BUILD_SUMMARY, Manifest

SUMMARY_VERSION = 1


def write_build_summary(
    bundle: Path, manifest: Manifest, timings: BuildTimings, *, kind: str, rejected: int, resumed_shards: int
) -> dict[str, Any]:
    """Write (atomically) and return the summary of the run that just sealed ``bundle``."""
    summary = {
        "summary_version": SUMMARY_VERSION,
        "bundle_id": manifest.bundle_id,
        "kind": kind,  # build, update or merge
        "images": manifest.count,
        "rejected": rejected,
        "resumed_shards": resumed_shards,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timings": timings.to_dict(),
    }
    atomic_write_json(bundle / BUILD_SUMMARY, summary)
    return summary


def read_build_summary(bundle: Path, manifest: Manifest) -> dict[str, Any] | None:
    """The summary of the run that sealed this manifest's bundle; None when absent or another run's."""
    try:
        summary = json.loads((bundle / BUILD_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("bundle_id") != manifest.bundle_id:
        return None
    return summary
