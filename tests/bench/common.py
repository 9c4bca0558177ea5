"""What every benchmark group shares: the run's context and the rows of the result table."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from tests.bench.isolate import ChildResult, run_isolated

MB = 1024 * 1024
IDLE_PERCENT = 15.0  # CPU use by other work above which a measurement is flagged
SAMPLE_SECONDS = 0.5
SATURATED = 0.85  # share of all cores in use above which processes wait for a CPU
RETRIES = 2  # with --wait-idle: measurements disturbed by other work are taken again, up to this often


@dataclass(frozen=True)
class Row:
    group: str  # build, search, render, neural
    name: str  # what is measured, e.g. "canny img/s"
    setting: str  # under which conditions, e.g. "5,000 JPEGs, --jobs 2"
    value: float | None  # the number, in ``unit`` (None: not measured, see note)
    unit: str
    target: str = ""  # e.g. ">= 600"
    met: bool | None = None  # None: no target
    note: str = ""
    large_only: bool = False  # made only by --large (500k/1M pools): kept when a plain run updates the group

    def shown(self) -> str:
        if self.value is None:
            return self.note or "n/a"
        return f"{format_number(self.value)} {self.unit}".strip()

    def status(self) -> str:
        return "" if self.met is None else ("met" if self.met else "MISSED")


def format_number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def at_least(value: float, target: float) -> tuple[str, bool]:
    return f">= {format_number(target)}", value >= target


def at_most(value: float, target: float) -> tuple[str, bool]:
    return f"<= {format_number(target)}", value <= target


def size_label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


@dataclass
class Context:
    out: Path
    large: bool
    jobs: int  # cores used to generate data (not a measured setting)
    quick: bool = False  # small sizes: checks that the suite runs; the figures mean little
    wait_idle: float = 0.0  # seconds to wait, before each measurement, for other work to leave the CPUs
    busiest: float = 0.0  # highest share of the CPUs other work took during a kept measurement, percent
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def work(self) -> Path:
        """Scratch space for bundles the benchmark builds and throws away."""
        path = self.out / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        status = f"  [{row.status()} {row.target}]" if row.met is not None else ""
        self.log(f"{row.group}: {row.name} ({row.setting}) = {row.shown()}{status}")

    def mark_large_only(self, since: int) -> None:
        """Flag the rows added since row ``since`` as --large figures."""
        self.rows[since:] = [replace(r, large_only=True) for r in self.rows[since:]]

    def detail(self, group: str, key: str, value: Any) -> None:
        self.details.setdefault(group, {})[key] = value

    def isolated(
        self, group: str, target: str, args: dict[str, Any], *, env: dict[str, str] | None = None, measure: bool = True
    ) -> ChildResult:
        """Run ``target`` in a fresh process.

        A measurement (``measure``; not data preparation) first waits up to ``wait_idle``
        for idle CPUs and, with ``wait_idle``, is taken again if other work disturbed it.
        """
        if not measure:
            return run_isolated(target, args, log=self.out / "logs" / f"{group}.log", env=env)
        for attempt in range(RETRIES + 1):
            busy = self.other_load()
            result = run_isolated(target, args, log=self.out / "logs" / f"{group}.log", env=env)
            other = 100 * result.other_cpu_share
            if not disturbed(result) or self.wait_idle <= 0 or attempt == RETRIES:
                break
            self.log(f"other work took {other:.0f}% of the CPUs during that measurement: taking it again")
        self.busiest = max(self.busiest, other)
        if disturbed(result):
            self.log(f"warning: other work took {other:.0f}% of the CPUs during that measurement")
        extra = {
            "cpu_busy_before_pct": round(busy, 1),
            "other_cpu_during_pct": round(other, 1),
            "attempts": attempt + 1,
        }
        return replace(result, value={**result.value, **extra})

    def other_load(self) -> float:
        """CPU use (percent of all cores) just before a measurement, waiting up to ``wait_idle`` for it to fall.

        Nothing of the benchmark runs at that moment, so any use is other work, which
        would slow the measurement down: it is recorded with every figure.
        """
        deadline = time.monotonic() + self.wait_idle
        busy = float(psutil.cpu_percent(interval=SAMPLE_SECONDS))
        while busy > IDLE_PERCENT and time.monotonic() < deadline:
            self.log(f"waiting for the CPUs: {busy:.0f}% busy with other work")
            time.sleep(5)
            busy = float(psutil.cpu_percent(interval=SAMPLE_SECONDS))
        if busy > IDLE_PERCENT:
            self.log(f"warning: {busy:.0f}% of the CPUs busy with other work; the next figure will suffer")
        return busy


def disturbed(result: ChildResult) -> bool:
    """Other work ran during the measurement while the CPUs were full, so it slowed the measurement.

    A one-process measurement leaves a core free: other work there is not counted against it.
    """
    cores = psutil.cpu_count() or 1
    own = result.cpu_seconds / (result.seconds * cores) if result.seconds > 0 else 0.0
    other = result.other_cpu_share
    return 100 * other > IDLE_PERCENT and own + other > SATURATED


def child_dict(result: ChildResult) -> dict[str, Any]:
    """A child's result with its process figures, for results.json."""
    return {
        **result.value,
        "process_seconds": round(result.seconds, 3),
        "peak_tree_rss_mb": round(result.peak_tree_rss / MB, 1),
        "peak_tree_anon_mb": round(result.peak_tree_anon / MB, 1),
        "child_maxrss_mb": round(result.child_maxrss / MB, 1),
        "cpu_seconds": round(result.cpu_seconds, 2),
    }


def rows_as_dicts(rows: list[Row]) -> list[dict[str, Any]]:
    return [{**asdict(r), "shown": r.shown(), "status": r.status()} for r in rows]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


Speed = Callable[[dict[str, Any]], float]


def best_pairs(
    limit: Callable[[], dict[str, Any]],
    phase: Callable[[], dict[str, Any] | None],
    limit_speed: Speed,
    phase_speed: Speed,
    repeats: int,
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A limit and the phase it bounds, measured alternately ``repeats`` times; the fastest of each
    (None when the phase could not be measured).

    Other developers' work comes and goes on this machine: alternating gives both sides
    the same chances, and the fastest run of each is the one least disturbed.
    """
    limits: list[dict[str, Any]] = []
    phases: list[dict[str, Any]] = []
    for _ in range(repeats):
        limits.append(limit())
        measured = phase()
        if measured is None:
            return None
        phases.append(measured)
    return max(limits, key=limit_speed), max(phases, key=phase_speed)
