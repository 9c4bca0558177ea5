"""One ff-render per output folder (see shared.lock for how the lock works)."""

from __future__ import annotations

from pathlib import Path

from shared.lock import ExclusiveLock

LOCK_NAME = ".ff-render.lock"


class OutputLock(ExclusiveLock):
    """Exclusive hold on an output folder for as long as the ``with`` block runs."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(
            out_dir / LOCK_NAME,
            tool="ff-render",
            guarded=out_dir,
            advice="wait for it to finish or choose another output folder",
        )
