"""What ff-index compare measured, and what it recommends: plain records and the two rules that judge them.

``look_score`` puts SSIM and ΔE on one scale; ``recommend`` picks the method with the best
look, or the fastest build within CLOSE_TO_BEST of it. Nothing here reads or writes files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.features.base import Image
from shared.quality import Thumbnails
from shared.report_html import encode_jpeg, resize_to_width

THUMB_WIDTH = 320  # pictures on the page
POOL_FOR_ESTIMATE = 500_000
# Within this share of the best look, a faster method is the better buy.
CLOSE_TO_BEST = 0.10
# What two unrelated pictures score (measured on real footage, see DESIGN.md "How we measure the look"):
# the zero of look_score.
RANDOM_SSIM = 0.06
RANDOM_DELTA_E = 53.0


@dataclass(frozen=True)
class Picture:
    """A JPEG for the page and its size in pixels."""

    jpeg: bytes
    size: tuple[int, int]  # (width, height)

    @classmethod
    def of(cls, image: Image) -> Picture:
        """``image`` (BGR) scaled to the page's THUMB_WIDTH and JPEG-encoded."""
        small = resize_to_width(image, THUMB_WIDTH)
        return cls(encode_jpeg(small), (small.shape[1], small.shape[0]))


@dataclass(frozen=True)
class FrameShot:
    """A frame of the clip as the comparison keeps it: thumbnails, never the whole frame."""

    position: int
    time: float
    size: tuple[int, int]  # (width, height) of the frame as decoded, upright
    picture: Picture
    thumbnails: Thumbnails


@dataclass(frozen=True)
class Pick:
    """One method's best image for one frame, and how much it looks like the frame."""

    image_id: int
    name: str  # path relative to the pool
    score: float
    ssim: float
    delta_e: float
    picture: Picture


@dataclass(frozen=True)
class MethodRun:
    """What one method cost and gave."""

    method: str
    dim: int
    images: int  # indexed (the sample less any file that would not decode)
    build_seconds: float
    worker_seconds: float  # read + decode + features summed over the build's workers
    jobs: int
    match_seconds: float  # describe + search of every frame
    picks: list[Pick]

    @property
    def build_rate(self) -> float:
        return self.images / self.build_seconds if self.build_seconds > 0 else 0.0

    @property
    def match_ms_per_frame(self) -> float:
        return 1000 * self.match_seconds / max(1, len(self.picks))

    @property
    def estimated_pool_seconds(self) -> float:
        """Seconds to index POOL_FOR_ESTIMATE images at this build's per-image cost, on ``jobs`` workers."""
        return POOL_FOR_ESTIMATE * self.worker_seconds / max(1, self.images) / self.jobs

    @property
    def look(self) -> float:
        return look_score(self.mean("ssim"), self.mean("delta_e"))

    def mean(self, name: str) -> float:
        return float(np.mean([getattr(p, name) for p in self.picks])) if self.picks else math.nan


@dataclass(frozen=True)
class Comparison:
    """Everything the page shows: the frames, each method's run, and what could not run."""

    video: Path
    pool: Path
    pool_images: int  # image files found in the pool
    aspect: tuple[int, int]  # the clip's, which every bundle is built at
    frames: list[FrameShot]
    runs: list[MethodRun]
    skipped: list[tuple[str, str]]  # (method, why)
    weights: dict[str, float]  # of the edge, texture and colour blocks in every match
    seconds: float

    @property
    def sample(self) -> int:
        return max((r.images for r in self.runs), default=0)

    def recommendation(self) -> Recommendation:
        return recommend(self.runs)


def look_score(ssim_value: float, delta_e_value: float) -> float:
    """SSIM and ΔE in one figure: each scaled from random pictures (0) to the frame itself (1), then averaged.

    Neither alone will do: SSIM is grey, so a hue-shifted photo of the right layout scores
    0.99; ΔE is colour at 16x9, blind to shapes.
    """
    structure = (ssim_value - RANDOM_SSIM) / (1 - RANDOM_SSIM)
    colour = (RANDOM_DELTA_E - delta_e_value) / RANDOM_DELTA_E
    return (structure + colour) / 2


@dataclass(frozen=True)
class Recommendation:
    method: str  # the one to use
    best_look: str  # the method that looks most like the frames (the same when nothing close builds faster)
    line: str


def duration_text(seconds: float) -> str:
    """A duration as a person says it: 40 s, 26 min, 3.6 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def recommend(runs: Sequence[MethodRun]) -> Recommendation:
    """The method with the best look, or the fastest to index a big pool within CLOSE_TO_BEST of that look.

    Speed is the per-image extraction cost (``estimated_pool_seconds``), not the small build's
    img/s: on a sample of hundreds, worker start-up and writing weigh as much as the features,
    and they are not what 500K photos cost.
    """
    if not runs:
        raise ValueError("no method to recommend")
    best = max(runs, key=lambda r: r.look)
    close = [r for r in runs if r.look >= best.look - CLOSE_TO_BEST * abs(best.look)]
    fastest = min(close, key=lambda r: r.estimated_pool_seconds)
    look = f"look {best.look:.2f}: SSIM {best.mean('ssim'):.3f}, ΔE {best.mean('delta_e'):.1f}"
    if fastest is best:
        others = (
            "no other method comes within 10 % of it"
            if len(close) == 1
            else "the fastest to index of the methods within 10 % of it"
        )
        return Recommendation(best.method, best.method, f"{best.method}: the best look ({look}); {others}")
    fast, slow = fastest.estimated_pool_seconds, best.estimated_pool_seconds
    speedup = slow / fast if fast > 0 else math.inf
    line = (
        f"{fastest.method}: within 10 % of the best look ({fastest.look:.2f} vs {best.method}'s {best.look:.2f}) "
        f"and {speedup:.1f}x faster to index (≈{duration_text(fast)} vs {duration_text(slow)} for "
        f"{POOL_FOR_ESTIMATE // 1000}K images); {best.method} if the look matters more than time"
    )
    return Recommendation(fastest.method, best.method, line)
