"""Tile mode's record of choices: one int32 [rows, cols] grid of image ids per frame.

On disk, beside results.json:

- ``OUT/tiles.log`` while rendering: a 16-byte header (magic, rows, cols) followed by
  raw little-endian int32 grids, appended and fsynced at each checkpoint, so a save
  costs O(frames saved). A kill mid-append leaves a partial last grid, which ``open``
  drops; ``truncate`` cuts the log back to the frames the checkpoint committed.
- ``OUT/tiles.npy`` at the end: int32 [frames, rows, cols], written atomically; the
  log is removed after it. A re-render with other output options reads it and needs no
  matching (576 ids a frame at 32x18: 2.3 kB, 57 kB a second at 25 fps).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray

from shared.atomic import atomic_save_npy, atomic_write_bytes, fsync_dir
from shared.errors import OutputError, StateError

TILE_LOG = "tiles.log"
TILE_GRIDS = "tiles.npy"
_MAGIC = b"FFTILES1"
_HEADER = struct.Struct("<8sii")
_DTYPE = np.dtype("<i4")


class TileGridLog:
    """An append-only log of per-frame tile grids (see the module docstring)."""

    def __init__(self, path: Path, rows: int, cols: int, handle: IO[bytes], frames: int) -> None:
        self.path = path
        self.rows = rows
        self.cols = cols
        self.frames = frames
        self._handle = handle

    @property
    def _grid_bytes(self) -> int:
        return self.rows * self.cols * _DTYPE.itemsize

    @classmethod
    def open(cls, path: Path, rows: int, cols: int) -> TileGridLog:
        """Open (or create) the log for a rows x cols grid; whole grids already in it are kept."""
        header = _HEADER.pack(_MAGIC, rows, cols)
        if not path.exists():
            atomic_write_bytes(path, header)
        try:
            handle = open(path, "r+b")  # noqa: SIM115 - kept open for appends until close()
            found = handle.read(_HEADER.size)
        except OSError as exc:
            raise OutputError(f"cannot open {path}: {exc.strerror or exc}") from None
        if found != header:
            handle.close()
            raise StateError(f"{path}: not a tile log of a {cols}x{rows} grid; rerun with --restart")
        size = os.fstat(handle.fileno()).st_size - _HEADER.size
        log = cls(path, rows, cols, handle, 0)
        log.frames = size // log._grid_bytes
        log.truncate(log.frames)  # a partial grid left by a kill
        return log

    def append(self, grids: NDArray[np.int32]) -> None:
        """Append grids [m, rows, cols] (or one [rows, cols]) and fsync them."""
        grids = np.asarray(grids, dtype=_DTYPE).reshape(-1, self.rows, self.cols)
        try:
            self._handle.seek(_HEADER.size + self.frames * self._grid_bytes)
            self._handle.write(np.ascontiguousarray(grids).tobytes())
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.frames += grids.shape[0]

    def truncate(self, frames: int) -> None:
        """Keep the first ``frames`` grids (those the render's checkpoint committed)."""
        if frames > self.frames:
            raise StateError(f"{self.path}: holds {self.frames} frames, the checkpoint expects {frames}")
        try:
            self._handle.truncate(_HEADER.size + frames * self._grid_bytes)
            os.fsync(self._handle.fileno())
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self.frames = frames

    def read(self) -> NDArray[np.int32]:
        """int32 [frames, rows, cols]: every grid appended so far."""
        self._handle.seek(_HEADER.size)
        data = self._handle.read(self.frames * self._grid_bytes)
        grids: NDArray[np.int32] = np.frombuffer(data, dtype=_DTYPE).reshape(self.frames, self.rows, self.cols)
        return grids

    def finish(self, dest: Path) -> None:
        """Write every grid to ``dest`` (OUT/tiles.npy) atomically, then remove the log."""
        atomic_save_npy(dest, self.read())
        self.close()
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)

    def close(self) -> None:
        self._handle.close()


def read_tile_grids(path: Path) -> NDArray[np.int32]:
    """OUT/tiles.npy as int32 [frames, rows, cols], memory-mapped."""
    try:
        grids = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: unreadable tile grids ({exc})") from None
    if grids.ndim != 3 or grids.dtype != _DTYPE:
        raise StateError(f"{path}: expected int32 [frames, rows, cols], got {grids.shape} {grids.dtype}")
    out: NDArray[np.int32] = grids
    return out
