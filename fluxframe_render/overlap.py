"""The match phase run beside the output phase: matching in a thread of its own, output in the caller's.

Output needs only committed choices (choice_feed.ChoiceFeed), so composing, colour transfer,
metrics and encoding overlap matching instead of following it. ``cancel`` stops the match
phase from the caller's thread (output failed, Ctrl-C): its runner closes the checkpoint
stage, which saves what is complete, as on any other stop. Without an output phase
(--skip-output) nothing runs beside, and matching runs in the caller's thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tqdm import tqdm

from fluxframe_render.choice_feed import ChoiceFeed, MatchStopped
from fluxframe_render.pipeline import Runner, RunTimings
from shared.cli_support import progress_bar

_M = TypeVar("_M")
_W = TypeVar("_W")


class Overlap:
    """One render's two phases; ``overlapped``: both run (a match to make and output to write)."""

    def __init__(self, progress: bool, overlapped: bool) -> None:
        self.progress = progress
        self.overlapped = overlapped
        self._lock = threading.Lock()
        self._runner: Runner | None = None
        self._cancelled = False

    def bar(self, total: int | None, desc: str, initial: int = 0, *, output: bool = False) -> tqdm[Any]:
        # Two bars at once on a terminal: matching above, rendering below.
        position = (1 if output else 0) if self.overlapped else None
        return progress_bar(total, desc, "frame", enabled=self.progress, initial=initial, position=position)

    def run(self, runner: Runner) -> RunTimings:
        with self._lock:
            self._runner = runner
            if self._cancelled:
                runner.cancel()
        return runner.run()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._runner is not None:
                self._runner.cancel()

    def together(self, match: Callable[[], _M], output: Callable[[], _W], feed: ChoiceFeed) -> tuple[_M, _W]:
        """``match`` in a thread, ``output`` here; the first failure wins (the match's, when output
        stopped only because matching did)."""
        made: list[_M] = []
        failed: list[BaseException] = []

        def matching() -> None:
            try:
                made.append(match())
                feed.close()
            except BaseException as exc:  # handed to the caller's thread, which raises it
                failed.append(exc)
                feed.fail()

        thread = threading.Thread(target=matching, name="ff-render-match", daemon=True)
        thread.start()
        try:
            written = output()
        except BaseException as exc:
            self.cancel()
            _join(thread)
            if isinstance(exc, MatchStopped) and failed:
                raise failed[0] from None
            raise
        _join(thread)
        if failed:
            raise failed[0]
        return made[0], written


def _join(thread: threading.Thread) -> None:
    """Wait for the match thread to end: it saves its complete choices first, even after a second Ctrl-C."""
    while thread.is_alive():
        with contextlib.suppress(KeyboardInterrupt):
            thread.join(0.1)
