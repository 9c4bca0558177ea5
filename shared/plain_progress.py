"""Progress for a log, not a terminal: a plain line now and then, never a carriage return.

A bar redraws itself with '\\r' several times a second; in a log file or cron mail every redraw
stays as a line of noise. Off a terminal, progress is one line per ~10 % (at most one a
second) or ~10 s, whichever comes first, with count, rate and ETA, and a last line with the
total time.
"""

from __future__ import annotations

import time
from typing import IO, Any

from tqdm import tqdm

__all__ = ["PlainProgress"]


class PlainProgress(tqdm):  # type: ignore[misc]  # tqdm is untyped here
    """A tqdm (so callers keep one type) that draws nothing itself and writes plain lines instead.

    Only ``update``, ``close`` and the context manager are used by FluxFrame; the rest of tqdm's
    drawing API is disabled (it is constructed with ``disable=True``) and does nothing.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        file: IO[str],
        initial: int = 0,
        every_seconds: float = 10.0,
        every_fraction: float = 0.1,
    ) -> None:
        super().__init__(total=total, desc=desc, unit=unit, initial=initial, file=file, disable=True)
        self.n = initial
        self._desc, self._unit = desc, unit
        self._file = file
        self._initial = initial
        self._every_seconds = every_seconds
        self._every_count = max(1, round(total * every_fraction)) if total else None
        self._started = self._last_time = time.monotonic()
        self._last_n = initial
        self._finished = False

    def update(self, n: int = 1) -> bool | None:
        self.n += n
        now = time.monotonic()
        if self.total and self.n >= self.total:
            return None  # close() writes the last line
        since = now - self._last_time
        # 10 % steps, but at most one line a second: a quick step must not fill the log either.
        by_count = self._every_count is not None and self.n - self._last_n >= self._every_count and since >= 1.0
        if by_count or since >= self._every_seconds:
            self._write(now)
        return None

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            if self.n != self._initial:  # a step with nothing to do says nothing
                self._write(time.monotonic(), last=True)
        super().close()

    def _write(self, now: float, last: bool = False) -> None:
        elapsed = max(now - self._started, 1e-9)
        rate = (self.n - self._initial) / elapsed
        count = f"{self.n:,}/{self.total:,} {self._unit}" if self.total else f"{self.n:,} {self._unit}"
        percent = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        if last:
            tail = f"done in {tqdm.format_interval(elapsed)}"
        elif self.total and rate > 0:
            tail = f"ETA {tqdm.format_interval((self.total - self.n) / rate)}"
        else:
            tail = ""
        parts = [f"{self._desc}: {count}{percent}", f"{rate:,.1f} {self._unit}/s", tail]
        self._file.write(", ".join(p for p in parts if p) + "\n")
        self._file.flush()
        self._last_n, self._last_time = self.n, now

    def __exit__(self, *exc: Any) -> None:
        self.close()
