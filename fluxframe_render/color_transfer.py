"""Colour transfer: adapt a chosen photo toward its frame in CIELAB, so the frame's light shows through.

- ``global``: each LAB channel's mean and standard deviation moved toward the frame's
  by ``strength`` (1 = the frame's statistics);
- ``local``: the photo's low frequencies moved toward the frame's: on a coarse grid
  (``grid`` cells, e.g. 16x9) the photo's LAB is shifted by ``strength`` x (frame's cell
  mean - photo's cell mean), the shift upsampled smoothly (bicubic, then bilinear) to the whole
  picture. The photo keeps its own detail; the frame's layout of light and colour shows.

The frame's statistics are smoothed over time (an exponential moving average) so that
colour never flickers on its own, and restart at a scene cut: never across one. The
transfer is fed frames in order, with the cut flags of scenes.py; its state is the
moving average only, which a resumed render rebuilds by feeding the frames of the
current scene again (or accepts a restart at the resume point: the render re-renders
output from the checkpoint in one pass, so it never needs to).

Pixel work is done in OpenCV's 8-bit LAB (table-driven, ~10x faster than float LAB at
720p); the statistics in float. Rounding costs at most half a step of 8-bit LAB.

``local`` converts to LAB and back at half the photo's size only: the shift is smooth, so
the change it makes (shifted minus unshifted, in BGR) is computed on the half-size photo and
added to the full-size photo, upsampled bilinearly. The photo keeps every pixel of its own
detail. Against a float-LAB reference at full size (10 pool photos x 10 frames of the bench
clip, 720p, default strengths) the error is about that of the full-size 8-bit path: mean 0.66
vs 0.70 ΔE, p99 2.3 vs 1.8 (worse along thin dark edges: p99 up to 5.2 on the test pictures);
at a quarter of the size it grew to 0.81, p99 3.2. It costs ~1.7x less CPU (720p, one thread:
8.3 instead of 14.8 ms a frame while a photo is held).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.errors import UsageError

COLOR_MODES = ("off", "global", "local")
STATS_WIDTH = 320  # frames are measured at this width: statistics need no more pixels
# ``local`` works at half size from this width and height up; below it, at full size (a few pixels).
HALF_SIZE_FROM = 64
# 8-bit LAB units per CIELAB unit: L is scaled by 255/100, a and b are offset by 128.
_LAB8_SCALE = np.array([255 / 100, 1.0, 1.0], dtype=np.float32)
_LAB8_OFFSET = np.array([0.0, 128.0, 128.0], dtype=np.float32)

Image = NDArray[np.uint8]
Stats = NDArray[np.float32]


@dataclass(frozen=True)
class ColorParams:
    mode: str = "off"
    strength: float = 0.5  # 0 = the photo unchanged, 1 = the frame's statistics
    # Strength for the colour channels (a, b) alone; None: ``strength``. SSIM, and the eye, read
    # structure from lightness: the frame's colours can come through further than its light.
    chroma_strength: float | None = None
    grid: tuple[int, int] = (16, 9)  # local: cells across, down
    smoothing: float = 0.3  # weight of the newest frame in the moving average; 1 = no smoothing

    def __post_init__(self) -> None:
        if self.mode not in COLOR_MODES:
            raise UsageError(f"--color-transfer must be one of {', '.join(COLOR_MODES)}, got {self.mode!r}")
        if not (np.isfinite(self.strength) and 0 <= self.strength <= 1):
            raise UsageError(f"--color-strength must be within [0, 1], got {self.strength}")
        chroma = self.chroma_strength
        if chroma is not None and not (np.isfinite(chroma) and 0 <= chroma <= 1):
            raise UsageError(f"--color-chroma-strength must be within [0, 1], got {chroma}")
        if min(self.grid) < 1:
            raise UsageError(f"--color-grid must be at least 1x1, got {self.grid[0]}x{self.grid[1]}")
        if not (np.isfinite(self.smoothing) and 0 < self.smoothing <= 1):
            raise UsageError(f"colour smoothing must be within (0, 1], got {self.smoothing}")


def channel_strengths(params: ColorParams) -> NDArray[np.float32]:
    """Strength per LAB channel: L, a, b."""
    chroma = params.strength if params.chroma_strength is None else params.chroma_strength
    return np.array([params.strength, chroma, chroma], dtype=np.float32)


def lab8(image: Image) -> NDArray[np.float32]:
    """OpenCV 8-bit LAB of a uint8 BGR image, as CIELAB float32 (L 0..100)."""
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2Lab).astype(np.float32)
    return cast(NDArray[np.float32], (lab - _LAB8_OFFSET) / _LAB8_SCALE)


def _measure_image(image: Image) -> Image:
    h, w = image.shape[:2]
    if w <= STATS_WIDTH:
        return image
    size = (STATS_WIDTH, max(1, round(h * STATS_WIDTH / w)))
    return cast(Image, cv2.resize(image, size, interpolation=cv2.INTER_AREA))


def global_stats(image: Image) -> Stats:
    """[mean L, a, b, std L, a, b] in CIELAB."""
    mean, std = cv2.meanStdDev(cv2.cvtColor(_measure_image(image), cv2.COLOR_BGR2Lab))
    mean8, std8 = np.asarray(mean, np.float32).ravel(), np.asarray(std, np.float32).ravel()
    return np.concatenate([(mean8 - _LAB8_OFFSET) / _LAB8_SCALE, std8 / _LAB8_SCALE]).astype(np.float32)


def grid_means(image: Image, grid: tuple[int, int]) -> Stats:
    """CIELAB means of grid cells: float32 [rows, cols, 3]."""
    cells = cv2.resize(_measure_image(image), grid, interpolation=cv2.INTER_AREA)
    return lab8(cast(Image, cells))


@dataclass(frozen=True)
class _PhotoParts:
    lab: Image  # 8-bit LAB: global, the whole photo; local, half of it (or the whole when too small)
    stats: Stats  # global statistics, or grid means
    base: Image | None  # local at half size: the half-size LAB back to BGR, unshifted


class ColorTransfer:
    """Adapts photos toward their frames, frame after frame; ``cut`` restarts the frame statistics."""

    def __init__(self, params: ColorParams) -> None:
        self.params = params
        self._frame_stats: Stats | None = None
        # The last photo and what the transfer needs of it (_PhotoParts): a held photo comes back
        # as the same array frame after frame, and its conversions are a third of the cost.
        self._photo: tuple[Image, _PhotoParts] | None = None

    def frame_stats(self, frame: Image, *, cut: bool) -> Stats | None:
        """Feed the next frame; its statistics smoothed within the scene (None when the mode is off)."""
        params = self.params
        if params.mode == "off":
            return None
        fresh = global_stats(frame) if params.mode == "global" else grid_means(frame, params.grid)
        if cut or self._frame_stats is None:
            self._frame_stats = fresh
        else:
            a = np.float32(params.smoothing)
            self._frame_stats = a * fresh + (1 - a) * self._frame_stats
        return self._frame_stats

    def apply(self, photo: Image, frame: Image, *, cut: bool) -> Image:
        """``photo`` (uint8 BGR at output size) adapted toward ``frame`` (the next frame in order)."""
        target = self.frame_stats(frame, cut=cut)
        if target is None or not channel_strengths(self.params).any():
            return photo
        parts = self._parts(photo)
        if self.params.mode == "global":
            return cast(Image, cv2.cvtColor(self._global(parts.lab, parts.stats, target), cv2.COLOR_Lab2BGR))
        if parts.base is None:  # a photo too small to halve
            shifted = self._local(parts.lab, parts.stats, target, photo.shape[:2])
            return cast(Image, cv2.cvtColor(shifted, cv2.COLOR_Lab2BGR))
        h, w = photo.shape[:2]
        moved = cv2.cvtColor(self._local(parts.lab, parts.stats, target, (h, w)), cv2.COLOR_Lab2BGR)
        # The change as its rises and falls, two saturated uint8 pictures: upsampled and applied in
        # uint8 arithmetic, 4x less CPU than one int16 change added with a type conversion (measured).
        up, down = cv2.subtract(moved, parts.base), cv2.subtract(parts.base, moved)
        raised = cv2.add(photo, cv2.resize(up, (w, h), interpolation=cv2.INTER_LINEAR))
        return cast(Image, cv2.subtract(raised, cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)))

    def _parts(self, photo: Image) -> _PhotoParts:
        """What the transfer needs of ``photo``, computed once per photo in a row."""
        if self._photo is not None and self._photo[0] is photo:
            return self._photo[1]
        h, w = photo.shape[:2]
        base: Image | None = None
        if self.params.mode == "global":
            stats, lab = global_stats(photo), cast(Image, cv2.cvtColor(photo, cv2.COLOR_BGR2Lab))
        else:
            if min(h, w) >= HALF_SIZE_FROM:
                half = cast(Image, cv2.resize(photo, (w // 2, h // 2), interpolation=cv2.INTER_AREA))
                # Grid means from the half-size photo: the same block averages (to rounding), a
                # quarter of the pixels to read (a tile mosaic is a new photo every frame).
                stats = grid_means(half, self.params.grid)
                lab = cast(Image, cv2.cvtColor(half, cv2.COLOR_BGR2Lab))
                # The unshifted round trip, so that the change is the shift's alone: no shift, no change.
                base = cast(Image, cv2.cvtColor(lab, cv2.COLOR_Lab2BGR))
            else:
                stats = grid_means(photo, self.params.grid)
                lab = cast(Image, cv2.cvtColor(photo, cv2.COLOR_BGR2Lab))
        parts = _PhotoParts(lab, stats, base)
        self._photo = (photo, parts)
        return parts

    def _global(self, lab: Image, stats: Stats, target: Stats) -> Image:
        """Each channel's affine map, as a lookup table over 8-bit LAB (one pass over the pixels)."""
        s = channel_strengths(self.params)
        mean, std = stats[:3], stats[3:]
        want_mean = (1 - s) * mean + s * target[:3]
        want_std = (1 - s) * std + s * target[3:]
        gain = want_std / np.maximum(std, np.float32(1e-3))
        levels = (np.arange(256, dtype=np.float32)[:, None] - _LAB8_OFFSET) / _LAB8_SCALE  # [256, 3] CIELAB
        mapped = ((levels - mean) * gain + want_mean) * _LAB8_SCALE + _LAB8_OFFSET
        table = np.clip(np.rint(mapped), 0, 255).astype(np.uint8).reshape(256, 1, 3)
        return cast(Image, cv2.LUT(lab, table))

    def _local(self, lab: Image, means: Stats, target: Stats, full: tuple[int, int]) -> Image:
        """``lab`` (the photo's, at its full ``full`` = (h, w) size or half of it) shifted by the smooth field."""
        h, w = full
        strengths = channel_strengths(self.params)
        shift = strengths * (target - means) * _LAB8_SCALE
        # Bicubic to a quarter of the full size, then bilinear: as smooth to the eye, a third of the cost at 720p.
        quarter = cv2.resize(shift, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_CUBIC)
        smooth = cv2.resize(quarter, (lab.shape[1], lab.shape[0]), interpolation=cv2.INTER_LINEAR)
        # uint8 + float32 with a uint8 result: rounded and saturated in the same pass.
        return cast(Image, cv2.add(lab, smooth, dtype=cv2.CV_8U))
