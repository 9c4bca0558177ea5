"""Walk an image pool: a stable, sorted list of candidate files, and what was passed over and why."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import InputError
from shared.own_folders import FolderKind, fluxframe_folder_kind

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
class SkippedFolder:
    """A folder inside the pool left out whole: FluxFrame's own output, not pictures to index."""

    path: str
    kind: FolderKind


@dataclass(frozen=True)
class ScanResult:
    root: Path
    entries: list[PoolEntry]
    rejected: list[ScanRejection]
    skipped_folders: list[SkippedFolder] = field(default_factory=list)

    def fingerprint(self) -> str:
        """sha256 over every entry's path, size and mtime: changes when the pool changes."""
        digest = hashlib.sha256()
        for e in self.entries:
            digest.update(os.fsencode(e.path) + b"\0" + f"{e.size}:{e.mtime_ns}\n".encode())
        return digest.hexdigest()


def describe_unusable(rejected: list[ScanRejection], shown: int = 5) -> str:
    """The first ``shown`` files with their reasons, then how many more: one line for an error message."""
    named = ", ".join(f"{_one_line(r.path)} ({r.reason})" for r in rejected[:shown])
    more = f" and {len(rejected) - shown} more" if len(rejected) > shown else ""
    return f"{len(rejected)} file{'s' if len(rejected) != 1 else ''} not used: {named}{more}"


def _one_line(rel: str) -> str:
    # Non-UTF-8 bytes (kept as surrogates) and newlines in a name must not break the message.
    return rel.encode("utf-8", "backslashreplace").decode("utf-8").replace("\n", "\\n")


def _sort_key(rel: str) -> bytes:
    # Sort by the file system's bytes so non-UTF-8 names have a stable place too.
    return os.fsencode(rel)


def scan_pool(root: Path, *, limit: int | None = None) -> ScanResult:
    """Every image file under ``root`` (recursively, following directory symlinks without looping).

    Hidden files and folders are skipped silently (tool droppings like .DS_Store);
    files with a non-image extension are recorded as rejected ("not_image_extension").
    Folders holding a FluxFrame bundle or render output are skipped whole and listed in
    ``skipped_folders``: a render's frames are matches of this very pool, not new pictures.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: pool folder does not exist")
    if not root.is_dir():
        raise InputError(f"{root}: pool is not a folder")
    entries: list[PoolEntry] = []
    rejected: list[ScanRejection] = []
    skipped: list[SkippedFolder] = []
    for rel, st, problem in _walk(root, skipped):
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
    skipped.sort(key=lambda f: _sort_key(f.path))
    return ScanResult(root=root.resolve(), entries=entries, rejected=rejected, skipped_folders=skipped)


def _walk(
    root: Path, skipped: list[SkippedFolder]
) -> Iterator[tuple[str, os.stat_result | None, tuple[str, str] | None]]:
    """Yield (relative path, stat, problem) for every non-hidden file; problem is (reason, detail).

    FluxFrame's own folders below ``root`` are not entered; they are appended to ``skipped``.
    """
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
                kind = fluxframe_folder_kind(Path(item.path))
                if kind is None:
                    stack.append((item.path, rel))
                else:
                    skipped.append(SkippedFolder(rel, kind))
            elif stat.S_ISREG(st_item.st_mode):
                if not os.access(item.path, os.R_OK):
                    yield rel, None, ("unreadable", "permission denied")
                else:
                    yield rel, st_item, None
            else:
                yield rel, None, ("not_regular_file", "not a regular file (device, socket or pipe)")
