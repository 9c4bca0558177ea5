"""Typed errors and the exit codes the CLIs map them to.

Every error a user can cause or meet is one of these; anything else is a bug and
exits with code 1 (traceback only with --debug).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1  # unexpected error: a bug, please report it
EXIT_USAGE = 2  # bad command line (click's own usage errors use 2 as well)
EXIT_INPUT = 3  # an input file is missing, unreadable or not what it claims
EXIT_BUNDLE = 4  # a bundle is missing, tampered, incomplete or of an unknown version
EXIT_STATE = 5  # a checkpoint / lock / existing output refuses the run
EXIT_MODEL = 6  # a neural model is missing: run the command the message names
EXIT_IO = 7  # writing failed (disk full, permission); earlier output is intact
EXIT_INTERRUPTED = 130  # Ctrl-C; progress so far is checkpointed


class FluxFrameError(Exception):
    """Base of every expected error; the message is one line for the user."""

    exit_code: int = EXIT_INTERNAL


class UsageError(FluxFrameError):
    exit_code = EXIT_USAGE


class InputError(FluxFrameError):
    exit_code = EXIT_INPUT


class BundleError(FluxFrameError):
    exit_code = EXIT_BUNDLE


class StateError(FluxFrameError):
    exit_code = EXIT_STATE


class ModelMissingError(FluxFrameError):
    exit_code = EXIT_MODEL


class OutputError(FluxFrameError):
    exit_code = EXIT_IO


class ImageDecodeError(InputError):
    """One image could not be used. ``reason`` is a short stable code.

    Reasons: empty, truncated, not_an_image, unsupported, too_large, too_small,
    unreadable, vanished, outside_pool.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
