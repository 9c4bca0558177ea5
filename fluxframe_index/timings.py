"""Where a build's time goes, stage by stage: busy (working) and waiting (idle or blocked).

Stages: scan (walk the pool), extract (workers: read, decode, prepare = crop and resize to
the comparison size, features, tiles; waiting is worker time spent on none of them, e.g.
start-up and the last chunks' imbalance), write (workers' shard files + assembling the
bundle's files), seal (rejected table, IVF index, manifest, swap into place). Worker
seconds are summed over workers, as clip-retrieval's runner sums its per-batch stage times.
Every build, update and merge writes them to the bundle's build summary (fluxframe_index.summary);
``ff-index build --timings`` prints them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fluxframe_index.extract import ChunkStats

STAGES = ("scan", "extract", "write", "seal")
EXTRACT_PARTS = ("read", "decode", "prepare", "features", "tiles")


@dataclass
class StageTime:
    busy_s: float = 0.0
    waiting_s: float = 0.0


@dataclass
class BuildTimings:
    stages: dict[str, StageTime] = field(default_factory=lambda: {name: StageTime() for name in STAGES})
    # Worker seconds of the extract stage by part: what the decode share of a build is read from.
    extract_parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(EXTRACT_PARTS, 0.0))
    jobs: int = 1
    worker_write_s: float = 0.0  # shard files written by the workers (part of the write stage)
    started: float = field(default_factory=time.perf_counter)  # when the build, update or merge began
    images_extracted: int = 0  # images this run decoded (resumed shards and kept rows not counted)

    def wall_s(self) -> float:
        """Seconds since the run began."""
        return time.perf_counter() - self.started

    @contextlib.contextmanager
    def busy(self, stage: str) -> Iterator[None]:
        """Time the block as the parent process's busy time in ``stage``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage].busy_s += time.perf_counter() - started

    def add_chunk(self, stats: ChunkStats) -> None:
        parts = {
            "read": stats.read_s,
            "decode": stats.decode_s,
            "prepare": stats.prepare_s,
            "features": stats.feature_s,
            "tiles": stats.tile_s,
        }
        for name, seconds in parts.items():
            self.extract_parts[name] += seconds
        self.stages["extract"].busy_s += sum(parts.values())
        self.stages["write"].busy_s += stats.write_s
        self.worker_write_s += stats.write_s
        self.images_extracted += stats.images

    def close_extract(self, wall_s: float) -> None:
        """Record as waiting the worker time the extraction's ``wall_s`` offered and no chunk used."""
        offered = wall_s * self.jobs
        self.stages["extract"].waiting_s = max(0.0, offered - self.stages["extract"].busy_s - self.worker_write_s)

    def stage_seconds(self) -> dict[str, float]:
        """The flat per-part seconds earlier summaries gave (read, decode, features, tiles, write, finalize).

        Their "decode" includes preparing the image (crop and resize), as it always did.
        """
        parts = self.extract_parts
        return {
            "read": parts["read"],
            "decode": parts["decode"] + parts["prepare"],
            "features": parts["features"],
            "tiles": parts["tiles"],
            "write": self.stages["write"].busy_s,
            "finalize": self.stages["seal"].busy_s,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "wall_s": round(self.wall_s(), 4),
            "images_extracted": self.images_extracted,
            "stages": {
                name: {"busy_s": round(t.busy_s, 4), "waiting_s": round(t.waiting_s, 4)}
                for name, t in self.stages.items()
            },
            "extract_parts_s": {name: round(s, 4) for name, s in self.extract_parts.items()},
        }

    def lines(self) -> list[str]:
        """Human-readable rows for ``ff-index build --timings``."""
        out = [f"{'stage':<8} {'busy s':>9} {'waiting s':>10}"]
        out += [f"{name:<8} {t.busy_s:>9.2f} {t.waiting_s:>10.2f}" for name, t in self.stages.items()]
        total = sum(self.extract_parts.values())
        shares = ", ".join(
            f"{name} {seconds:.2f} s ({100 * seconds / total:.0f}%)" if total > 0 else f"{name} 0.00 s"
            for name, seconds in self.extract_parts.items()
        )
        jobs = f"{self.jobs} job{'s' if self.jobs != 1 else ''}"
        out.append(f"worker seconds in extract (summed over {jobs}): {shares}")
        return out
