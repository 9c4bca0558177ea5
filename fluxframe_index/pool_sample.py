"""A deterministic sample of a pool, as a folder of links that any build can index.

The sample takes every (n / count)-th file in the scan's path order, so every folder of the
pool is represented in proportion, and the same pool always gives the same sample. The
links keep the files' pool-relative paths, so a bundle built over the sample names each
image as the pool does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fluxframe_index.scan import PoolEntry, ScanResult


def spread_sample(scan: ScanResult, count: int) -> list[PoolEntry]:
    """``count`` entries evenly spread over the scan's sorted entries (all of them when there are fewer)."""
    entries = scan.entries
    if count >= len(entries):
        return list(entries)
    step = len(entries) / count
    return [entries[int(i * step)] for i in range(count)]


def link_sample(root: Path, entries: list[PoolEntry], dest: Path) -> None:
    """Make ``dest`` a folder holding ``entries`` of the pool at ``root`` under their relative paths.

    Symbolic links cost nothing whatever the photos' sizes; where the file system refuses
    them, the files are copied.
    """
    dest.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        source = root / entry.path
        link = dest / entry.path
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(source.resolve(), link)
        except OSError:
            shutil.copy2(source, link)
