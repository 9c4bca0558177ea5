"""Atomic writes: a later run trusts a file (or a folder) only if it is complete.

Write to a temporary name in the same folder, fsync, rename over the target,
fsync the folder. A crash leaves either the old file or the new one, never half.
Every rename that publishes something a later run trusts goes through
:func:`rename_durably` (files) or :func:`replace_folder` (a bundle folder).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from shared.errors import OutputError


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2() -> Any:
    """glibc's renameat2 (Linux 3.15+, glibc 2.28+), or None where it does not exist."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    except OSError:
        return None


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or file system cannot.

    Replacing a folder with two renames leaves a moment (and, after a kill, for good) where
    neither the old nor the new folder is at its path; an exchange has no such moment.
    """
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def rename_durably(src: Path, dest: Path) -> None:
    """Rename ``src`` over ``dest`` (same file system) and fsync the folder, so the rename survives a crash."""
    os.replace(src, dest)
    fsync_dir(Path(dest).parent)


def replace_folder(new: Path, dest: Path) -> None:
    """Put the folder ``new`` at ``dest``; a previous ``dest`` is swapped out in the same atomic step, then removed.

    Readers (and a kill at any moment) find the old or the new folder at ``dest``, never nothing.
    Where the system cannot exchange two paths, the previous ``dest`` is moved aside first.
    """
    if dest.is_dir() and exchange_paths(new, dest):
        fsync_dir(dest.parent)
        shutil.rmtree(new, ignore_errors=True)  # now the previous folder
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{int(time.time())}")
    if dest.exists():
        os.replace(dest, old)
    rename_durably(new, dest)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file to write; on success it replaces ``path`` atomically, on error it vanishes."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp creates 0600; a bundle is meant to be read by other users' renders too.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        rename_durably(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_npy(path: Path, array: NDArray[Any]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
