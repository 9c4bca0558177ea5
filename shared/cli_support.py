"""What both command lines share: typed errors to one line and an exit code, progress bars.

The CLIs stay thin: they parse options, call one API function inside
:func:`report_errors`, and print a summary.
"""

from __future__ import annotations

import contextlib
import errno
import sys
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn

import click
from tqdm import tqdm

from shared.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_IO, FluxFrameError
from shared.plain_progress import PlainProgress

# What --quiet means in both tools (one definition, shown in both --help texts).
QUIET_HELP = "No progress output; warnings and errors still go to stderr, the one-line summary to stdout."

# Write errors that mean no room: disk full, quota exceeded, file size limit (RLIMIT_FSIZE).
_STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextlib.contextmanager
def report_errors(prog: str, debug: bool) -> Iterator[None]:
    """Map expected errors to one line on stderr and their exit code; --debug adds the traceback."""
    try:
        yield
    except FluxFrameError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"{prog}: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{prog}: interrupted; finished work is kept, rerun the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MemoryError:
        click.echo(f"{prog}: error: out of memory", err=True)
        sys.exit(EXIT_INTERNAL)
    except OSError as exc:
        if exc.errno not in _STORAGE_FULL:
            _internal_error(prog, exc, debug)
        # Any write may meet a full disk (numpy memmaps, Parquet and FFmpeg writers included);
        # every trusted file is written to a temporary name first, so what exists stays intact.
        if debug:
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        click.echo(
            f"{prog}: error: a write failed{where}: {exc.strerror or exc}; free some space or raise the limit "
            "and rerun (earlier output is intact)",
            err=True,
        )
        sys.exit(EXIT_IO)
    except Exception as exc:
        _internal_error(prog, exc, debug)


def _internal_error(prog: str, exc: Exception, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    click.echo(f"{prog}: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
    sys.exit(EXIT_INTERNAL)


def progress_bar(
    total: int | None, desc: str, unit: str, enabled: bool = True, initial: int = 0, position: int | None = None
) -> tqdm[Any]:
    """Progress on stderr with count, rate and ETA; silent when disabled.

    ``position``: the bar's line when several run at once (0 the top one); plain lines ignore it.

    A redrawn bar on a terminal; otherwise (a log, cron mail, a pipe) a plain line every
    ~10 % or ~10 s, since every redraw of a bar would stay in the log as a line of noise.
    """
    if enabled and not _is_terminal(sys.stderr):
        return PlainProgress(total, desc, unit, sys.stderr, initial=initial)
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not enabled,
        dynamic_ncols=True,
        smoothing=0.1,
        file=sys.stderr,
        position=position,
    )


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
