"""The staging folder beside a bundle: one writer at a time, reused only for the same plan, removed when done.

Shards, assets and the bundle being assembled live in ``.NAME.partial`` next to the
bundle, so a killed build resumes from its finished shards and the bundle path only
ever holds a whole bundle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json
from shared.errors import OutputError, UsageError
from shared.lock import ExclusiveLock

PLAN = "plan.json"


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


def prepare_staging(stage: Path, plan: dict[str, Any]) -> None:
    """Reuse a staging folder only if it was made for exactly this plan; otherwise start clean."""
    plan_path = stage / PLAN
    if stage.exists():
        try:
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


def fresh_work_dir(stage: Path, asset_dir: Path) -> Path:
    """An empty folder for the bundle being assembled, holding a copy of the method's assets."""
    work = stage / "bundle"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    for asset in asset_dir.iterdir():
        shutil.copy2(asset, work / asset.name)
    return work
