"""One writer at a time: a lock file that names its holder and dies with it.

ff-render holds one per output folder, ff-index one per bundle being written.
The lock is an advisory ``flock`` on a file: the kernel releases it
when the holder exits in any way (kill -9 included), so a lock left by a dead
process is simply taken over, with no pid guessing and no race between two
processes that both find it stale. The file holds the holder's pid, host and start
time only so that the refusal can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from shared.errors import OutputError, StateError


def _holder(fd: int, tool: str) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return f"another {tool}"
    if not isinstance(data, dict) or "pid" not in data:
        return f"another {tool}"
    started = data.get("started", "")
    return f"{tool} pid {data['pid']} on {data.get('host', '?')}" + (f" (started {started})" if started else "")


class ExclusiveLock:
    """Exclusive hold on ``path`` (a lock file) for as long as the ``with`` block runs.

    ``guarded`` names what the lock protects and ``tool`` who takes it, for the refusal message.
    """

    def __init__(self, path: Path, *, tool: str, guarded: Path, advice: str) -> None:
        self.path = path
        self.tool = tool
        self.guarded = guarded
        self.advice = advice
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd, self.tool)
                os.close(fd)
                raise StateError(f"{self.guarded} is in use by {holder}; {self.advice}") from None
            # The previous holder may have unlinked the file between our open and our flock:
            # then we hold a lock on a nameless inode, so start again on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Unlink while still holding the lock, so nobody can lock the old inode in between.
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> ExclusiveLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
