"""Run one measurement in a fresh Python process and record its memory.

Peak memory is measured two ways: psutil samples the summed RSS of the child and all
its descendants (loky workers included) every few milliseconds, and ``os.wait4`` gives
the kernel's ru_maxrss (the largest single process of the child's tree). A fresh
process per measurement means no page, cache or worker pool carries over from the last.

The child runs ``python -m tests.bench.isolate TARGET ARGS.json RESULT.json``: TARGET is
``module:function``, called with the JSON arguments; it returns a JSON-able dict.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from shared.atomic import atomic_write_json

SAMPLE_SECONDS = 0.02


class ChildFailed(RuntimeError):
    """A measurement process exited non-zero; the message holds the end of its log."""


@dataclass(frozen=True)
class ChildResult:
    value: dict[str, Any]
    seconds: float  # wall time of the whole child process, start-up included
    peak_tree_rss: int  # bytes: the largest sampled sum of RSS over the child and its descendants
    peak_tree_anon: int  # bytes: the same for RSS minus file-backed pages (mapped files, libraries)
    child_maxrss: int  # bytes: ru_maxrss from wait4 (largest single process of the tree)
    cpu_seconds: float  # user + system CPU of the child and the descendants it waited for
    other_cpu_share: float  # CPU used by everything else on the machine meanwhile, as a share of all cores


class _TreeSampler(threading.Thread):
    """Polls the summed RSS of a process and its descendants until told to stop."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.peak_anon = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop_event.is_set():
            total = anon = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            for proc in procs:
                try:
                    info = proc.memory_info()
                except psutil.Error:
                    continue  # a worker that just exited
                total += int(info.rss)
                # Resident pages not backed by a file (heap, arrays): what the process really holds.
                anon += int(info.rss) - int(getattr(info, "shared", 0))
            self.peak = max(self.peak, total)
            self.peak_anon = max(self.peak_anon, anon)
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_isolated(target: str, args: dict[str, Any], *, log: Path, env: dict[str, str] | None = None) -> ChildResult:
    """Call ``target(**args)`` in a fresh interpreter; its output goes to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ffbench-") as tmp:
        args_path, result_path = Path(tmp) / "args.json", Path(tmp) / "result.json"
        args_path.write_text(json.dumps(args))
        cmd = [sys.executable, "-m", "tests.bench.isolate", target, str(args_path), str(result_path)]
        started = time.perf_counter()
        busy_before = _busy_seconds()
        with open(log, "ab") as out:
            out.write(f"\n=== {target} {json.dumps(args)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
            sampler = _TreeSampler(proc.pid)
            sampler.start()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            sampler.stop()
        seconds = time.perf_counter() - started
        own = usage.ru_utime + usage.ru_stime
        other = max(0.0, _busy_seconds() - busy_before - own)
        if proc.returncode != 0 or not result_path.exists():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise ChildFailed(f"{target} exited {proc.returncode}; end of {log}:\n" + "\n".join(tail))
        value = json.loads(result_path.read_text())
    # Linux reports ru_maxrss in KiB.
    cores = psutil.cpu_count() or 1
    return ChildResult(
        value, seconds, sampler.peak, sampler.peak_anon, int(usage.ru_maxrss) * 1024, own, other / (seconds * cores)
    )


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, everything but idle and I/O wait)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _child_main(argv: list[str]) -> int:
    target, args_path, result_path = argv
    module_name, _, func_name = target.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    args = json.loads(Path(args_path).read_text())
    value = func(**args)
    atomic_write_json(Path(result_path), value)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
