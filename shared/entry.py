"""The console scripts' entry points: a Ctrl-C at any moment is one line and exit 130.

Importing a tool's command line takes about half a second (numpy, FAISS, OpenCV, PyAV...).
Python's own SIGINT handler would turn a Ctrl-C during that time into a KeyboardInterrupt
traceback, so until the tool is imported a Ctrl-C ends the process at once with one line:
nothing has been started, so there is nothing to keep. From then on the tool's own handling
(shared.cli_support.report_errors) keeps finished work and exits 130.

This module imports nothing heavy, so that its handler is in place within milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from importlib import import_module
from types import FrameType

from shared.errors import EXIT_INTERRUPTED

__all__ = ["ff_index", "ff_render", "run"]


def _interrupted_while_starting(prog: str) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        # os.write and os._exit: no Python-level I/O or clean-up that a second Ctrl-C could interrupt.
        os.write(2, f"{prog}: interrupted while starting; nothing was done\n".encode())
        os._exit(EXIT_INTERRUPTED)

    return handler


def run(prog: str, module: str, attr: str = "main") -> None:
    """Import ``module`` with Ctrl-C ending the process cleanly, then call its ``attr``."""
    signal.signal(signal.SIGINT, _interrupted_while_starting(prog))
    main: Callable[[], object] = getattr(import_module(module), attr)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        try:
            main()
        finally:
            # The run is over and its outcome said: a Ctrl-C while the interpreter exits (joblib's
            # and PyAV's clean-up, threading's shutdown) must neither print "Exception ignored" nor
            # end the process by SIGINT, which Python's finalisation does by restoring the default
            # handler. An ignored signal stays ignored through finalisation.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    except KeyboardInterrupt:
        # Between the tool's start and its own handler (argument parsing), or after it returned
        # but before the line above: the one line, and nothing after it can be interrupted.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stderr.write(f"{prog}: interrupted\n")
        sys.exit(EXIT_INTERRUPTED)


def ff_index() -> None:
    run("ff-index", "fluxframe_index.cli")


def ff_render() -> None:
    run("ff-render", "fluxframe_render.cli")
