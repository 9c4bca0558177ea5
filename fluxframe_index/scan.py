"""Walk an image pool: a stable, sorted list of candidate files, and what was passed over and why."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".dib", ".gif"}
)


@dataclass(frozen=True)
class PoolEntry:
    path: str  # relative to the pool root, POSIX separators; non-UTF-8 bytes kept via surrogateescape
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanRejection:
    path: str
    reason: str
    detail: str


@dataclass(frozen=True)
class ScanResult:
    root: Path
    entries: list[PoolEntry]
    rejected: list[ScanRejection]

    def fingerprint(self) -> str:
        """sha256 over every entry's path, size and mtime: changes when the pool changes."""
        digest = hashlib.sha256()
        for e in self.entries:
            digest.update(os.fsencode(e.path) + b"\0" + f"{e.size}:{e.mtime_ns}\n".encode())
        return digest.hexdigest()


def _sort_key(rel: str) -> bytes:
    # Sort by the file system's bytes so non-UTF-8 names have a stable place too.
    return os.fsencode(rel)


def scan_pool(root: Path, *, limit: int | None = None) -> ScanResult:
    """Every image file under ``root`` (recursively, following directory symlinks without looping).

    Hidden files and folders are skipped silently (tool droppings like .DS_Store);
    files with a non-image extension are recorded as rejected ("not_image_extension").
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: pool folder does not exist")
    if not root.is_dir():
        raise InputError(f"{root}: pool is not a folder")
    entries: list[PoolEntry] = []
    rejected: list[ScanRejection] = []
    for rel, st, problem in _walk(root):
        if problem is not None:
            rejected.append(ScanRejection(rel, problem[0], problem[1]))
        elif os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
            rejected.append(ScanRejection(rel, "not_image_extension", "file name does not end in an image extension"))
        else:
            assert st is not None
            entries.append(PoolEntry(rel, st.st_size, st.st_mtime_ns))
    entries.sort(key=lambda e: _sort_key(e.path))
    rejected.sort(key=lambda r: _sort_key(r.path))
    if limit is not None:
        entries = entries[:limit]
    return ScanResult(root=root.resolve(), entries=entries, rejected=rejected)


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result | None, tuple[str, str] | None]]:
    """Yield (relative path, stat, problem) for every non-hidden file; problem is (reason, detail)."""
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as exc:
            yield rel_folder or ".", None, ("unreadable", f"folder: {exc.strerror}")
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue  # a symlink loop or a second link to a folder already walked
        seen_dirs.add(key)
        try:
            with os.scandir(folder) as it:
                items = sorted(it, key=lambda d: os.fsencode(d.name))
        except OSError as exc:
            yield rel_folder or ".", None, ("unreadable", f"folder: {exc.strerror}")
            continue
        for item in items:
            if item.name.startswith("."):
                continue
            rel = f"{rel_folder}/{item.name}" if rel_folder else item.name
            try:
                st_item = item.stat(follow_symlinks=True)
            except OSError as exc:
                yield rel, None, ("unreadable", f"{exc.strerror or exc} (broken link?)")
                continue
            if stat.S_ISDIR(st_item.st_mode):
                stack.append((item.path, rel))
            elif stat.S_ISREG(st_item.st_mode):
                if not os.access(item.path, os.R_OK):
                    yield rel, None, ("unreadable", "permission denied")
                else:
                    yield rel, st_item, None
            else:
                yield rel, None, ("not_regular_file", "not a regular file (device, socket or pipe)")
