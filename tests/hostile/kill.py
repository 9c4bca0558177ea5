"""Kill -9 a real child process at a random point, and check what it left behind."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.hostile.procs import Arg, argv, child_env


@dataclass(frozen=True)
class KillOutcome:
    killed: bool  # False: the run finished before the kill point
    delay: float  # seconds after the work started
    returncode: int


def wait_for(condition: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    """Poll until ``condition`` holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.002)
    raise TimeoutError("the child neither started its work nor ended")


def kill_at_random_point(
    name: str,
    args: Sequence[Arg],
    started: Callable[[], bool],
    window: float,
    rng: random.Random,
) -> KillOutcome:
    """Start the CLI in its own process group; once ``started()`` holds, wait a random part of
    ``window`` seconds and SIGKILL the whole group (workers included), as a crash or the OOM killer would."""
    proc = subprocess.Popen(
        argv(name, args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(),
        start_new_session=True,
    )
    delay = rng.uniform(0.0, window)
    try:
        if wait_for(started, 60, proc):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=delay)
        if proc.poll() is not None:
            return KillOutcome(False, delay, proc.returncode)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return KillOutcome(True, delay, proc.returncode)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Ignored SIGXFSZ turns a write past the limit into an EFBIG error instead of a kill:
        # exactly what a full disk (ENOSPC) looks like to the program.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_with_file_size_limit(name: str, args: Sequence[Arg], limit: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv(name, args),
        capture_output=True,
        text=True,
        errors="backslashreplace",
        env=child_env(),
        preexec_fn=_limit_file_size(limit),
        timeout=120,
        check=False,
    )
