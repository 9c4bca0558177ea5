"""How much an output frame looks like its source frame: the one definition of the look metrics.

Every figure compares small thumbnails (INTER_AREA), so it measures what a viewer sees
at a glance, not pixel noise, and costs little on every frame of every render:

- ``ssim``: SSIM of grey 64x36 thumbnails (random pictures score about 0.06);
- ``delta_e``: mean CIELAB distance (CIE76) of 16x9 thumbnails (random pictures about 53),
  ``delta_e_fine`` the same at 64x36 (finer layout);
- ``photo_ssim``: SSIM between the output and the chosen photo itself (colour transfer must
  leave the photo a photo);
- flicker: mean frame-to-frame ΔE of the output's 16x9 thumbnail ÷ the source's.

Only thumbnails are kept, never full frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

FINE_SIZE = (64, 36)  # (w, h): SSIM and fine ΔE
COARSE_SIZE = (16, 9)  # (w, h): ΔE and flicker
# Below this mean frame-to-frame ΔE the source is a still shot (its own change is encoder
# noise, ~0.4 measured on a still): a ratio to it would say more about the noise than the output.
STILL_SOURCE_DELTA_E = 0.05
SSIM_WINDOW = 7

Frame = NDArray[np.uint8]
Lab = NDArray[np.float32]


@dataclass(frozen=True)
class Thumbnails:
    """What the metrics need of one picture: grey 64x36 and CIELAB at 64x36 and 16x9."""

    grey: NDArray[np.uint8]
    lab_fine: Lab
    lab_coarse: Lab

    @classmethod
    def of(cls, frame: Frame) -> Thumbnails:
        """Thumbnails of a uint8 BGR picture of any size."""
        fine = np.asarray(cv2.resize(frame, FINE_SIZE, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        # From the fine thumbnail, whose 4x4 blocks it averages: one pass over the frame, not two
        # (a 720p INTER_AREA pass costs ~1 ms, the whole rest of a frame's metrics about as much).
        coarse = np.asarray(cv2.resize(fine, COARSE_SIZE, interpolation=cv2.INTER_AREA), dtype=np.uint8)
        return cls(np.asarray(cv2.cvtColor(fine, cv2.COLOR_BGR2GRAY)), to_lab(fine), to_lab(coarse))


def to_lab(image: Frame) -> Lab:
    """CIELAB (L 0..100, a and b about -128..127) of a uint8 BGR image, as float32."""
    # float input: OpenCV's 8-bit Lab is rescaled to 0..255 and rounded, which would bias ΔE.
    return np.asarray(cv2.cvtColor(image.astype(np.float32) * np.float32(1 / 255), cv2.COLOR_BGR2Lab))


def delta_e(a: Lab, b: Lab) -> float:
    """Mean CIE76 distance between two CIELAB images of one shape."""
    diff = a - b
    return float(np.sqrt(np.einsum("...c,...c->...", diff, diff)).mean())


def ssim(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """Mean SSIM of two grey uint8 thumbnails: skimage's structural_similarity with its defaults.

    The same formula (7x7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, the
    3-pixel border left out) with OpenCV box filters: a quarter of skimage's time on a 64x36
    thumbnail, where its per-call overhead dominated the metrics' cost per frame.
    """
    x, y = a.astype(np.float64), b.astype(np.float64)
    window = (SSIM_WINDOW, SSIM_WINDOW)

    def mean(image: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(cv2.blur(image, window, borderType=cv2.BORDER_REFLECT))

    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = SSIM_WINDOW // 2
    return float(s[pad:-pad, pad:-pad].mean())


@dataclass(frozen=True)
class FrameQuality:
    """The look of one output frame."""

    index: int  # position in the render, from 0
    image_id: int
    score: float  # match score of the shown image
    ssim: float
    delta_e: float
    delta_e_fine: float
    photo_ssim: float | None  # None when no photo was given (no colour transfer: output == photo)
    switched: bool  # the image differs from the previous frame's (False on the first frame)
    output_change: float | None  # ΔE (16x9) to the previous output frame; None on the first
    source_change: float | None  # ΔE (16x9) of the source to its previous frame; None on the first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class QualitySummary:
    """The look of a whole render."""

    frames: int
    mean_score: float
    mean_ssim: float
    mean_delta_e: float
    mean_delta_e_fine: float
    mean_photo_ssim: float | None  # None when no frame came with its photo
    switches: int
    switch_rate: float  # switches / (frames - 1): share of frames showing another image than the one before
    distinct_images: int
    output_change: float  # mean frame-to-frame ΔE (16x9) of the output
    source_change: float  # the same of the source
    flicker: float | None  # output_change / source_change; None for a still source (see STILL_SOURCE_DELTA_E)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self, *, choices: bool = True) -> str:
        """One line for a summary print-out; ``choices=False`` leaves out image switches and distinct
        images (a tile render's frames name only their most used tile: its own figures say more)."""
        flicker = "n/a (still source)" if self.flicker is None else f"{self.flicker:.1f}x source"
        switches = f"switches {100 * self.switch_rate:.0f}%, {self.distinct_images} images, " if choices else ""
        return (
            f"look: SSIM {self.mean_ssim:.3f}, ΔE {self.mean_delta_e:.1f}, flicker {flicker}, "
            f"{switches}score {self.mean_score:.3f}"
        )


class QualityTracker:
    """Fed every frame of a render in order; returns each frame's figures and, at the end, the summary.

    Keeps running sums and the previous frame's 16x9 thumbnails only.
    """

    def __init__(self) -> None:
        self._frames = 0
        self._sums = {"score": 0.0, "ssim": 0.0, "delta_e": 0.0, "delta_e_fine": 0.0, "photo_ssim": 0.0}
        self._photos = 0
        self._switches = 0
        self._output_change = 0.0
        self._source_change = 0.0
        self._images: set[int] = set()
        self._previous: tuple[int, Lab, Lab] | None = None  # image id, source and output 16x9 Lab
        # The last output picture and photo with their thumbnails: a held image comes back as the same array.
        self._last_output: tuple[Frame, Thumbnails] | None = None
        self._last_photo: tuple[Frame, Thumbnails] | None = None

    def add(self, source: Frame, output: Frame, photo: Frame | None, image_id: int, score: float) -> FrameQuality:
        """Measure one frame: its source, what the render shows, and the photo before colour transfer."""
        src = Thumbnails.of(source)
        if self._last_output is not None and self._last_output[0] is output:
            out = self._last_output[1]
        else:
            out = Thumbnails.of(output)
            self._last_output = (output, out)
        photo_ssim = None
        if photo is not None:
            if self._last_photo is None or self._last_photo[0] is not photo:
                self._last_photo = (photo, Thumbnails.of(photo))
            photo_ssim = ssim(out.grey, self._last_photo[1].grey)
        switched = False
        output_change = source_change = None
        if self._previous is not None:
            previous_id, previous_source, previous_output = self._previous
            switched = image_id != previous_id
            output_change = delta_e(out.lab_coarse, previous_output)
            source_change = delta_e(src.lab_coarse, previous_source)
            self._output_change += output_change
            self._source_change += source_change
            self._switches += switched
        record = FrameQuality(
            index=self._frames,
            image_id=image_id,
            score=float(score),
            ssim=ssim(src.grey, out.grey),
            delta_e=delta_e(src.lab_coarse, out.lab_coarse),
            delta_e_fine=delta_e(src.lab_fine, out.lab_fine),
            photo_ssim=photo_ssim,
            switched=switched,
            output_change=output_change,
            source_change=source_change,
        )
        self._frames += 1
        self._images.add(image_id)
        self._previous = (image_id, src.lab_coarse, out.lab_coarse)
        for name in ("score", "ssim", "delta_e", "delta_e_fine"):
            self._sums[name] += getattr(record, name)
        if photo_ssim is not None:
            self._sums["photo_ssim"] += photo_ssim
            self._photos += 1
        return record

    def summary(self) -> QualitySummary:
        n = max(1, self._frames)
        steps = max(1, self._frames - 1)
        output_change = self._output_change / steps
        source_change = self._source_change / steps
        return QualitySummary(
            frames=self._frames,
            mean_score=self._sums["score"] / n,
            mean_ssim=self._sums["ssim"] / n,
            mean_delta_e=self._sums["delta_e"] / n,
            mean_delta_e_fine=self._sums["delta_e_fine"] / n,
            mean_photo_ssim=self._sums["photo_ssim"] / self._photos if self._photos else None,
            switches=self._switches,
            switch_rate=self._switches / steps,
            distinct_images=len(self._images),
            output_change=output_change,
            source_change=source_change,
            flicker=output_change / source_change if source_change >= STILL_SOURCE_DELTA_E else None,
        )
