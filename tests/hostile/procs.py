"""Running the real command lines as child processes, the way a user or a scheduler does."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# Small and fast everywhere: the suite must stay well under two minutes on two cores.
Arg = str | os.PathLike[str]
FAST_INDEX_ARGS: list[Arg] = ["--method", "canny", "--comparison-size", "64", "--jobs", "1", "--quiet"]


def tool(name: str) -> str:
    """The installed console script (ff-index / ff-render) next to this interpreter."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed (pip install -e .)"
    return found


def argv(name: str, args: Sequence[Arg]) -> list[str]:
    return [tool(name), *(os.fspath(a) for a in args)]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONUNBUFFERED"] = "1"
    # One thread per library: the tests run two at a time on two cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    return env


def run(name: str, args: Sequence[Arg], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv(name, args),
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=timeout,
        env=child_env(),
        check=False,
    )


_ERROR_LINE = re.compile(r"^(ff-index|ff-render): (error: |internal error: |interrupted)|^Error: ")


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that report the error (click's own start with 'Error: ')."""
    return [line for line in stderr.splitlines() if _ERROR_LINE.match(line)]


def assert_clean_failure(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Exit ``code``, no traceback, exactly one error line that contains every needle; return that line."""
    where = f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.returncode == code, where
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, where
    lines = error_lines(result.stderr)
    assert len(lines) == 1, where
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def run_all(
    commands: Sequence[tuple[str, Sequence[Arg]]], timeout: float = 120
) -> list[subprocess.CompletedProcess[str]]:
    """Run several CLI calls at once (each is mostly interpreter start-up) and return them in order."""
    procs = [
        (
            argv(name, args),
            subprocess.Popen(
                argv(name, args),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="backslashreplace",
                env=child_env(),
            ),
        )
        for name, args in commands
    ]
    results = []
    for words, proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(words, proc.returncode, out, err))
    return results
