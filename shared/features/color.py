"""HSV colour histograms (the colour block of every classic method)."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.features.base import Image
from shared.features.gradients import cell_histogram


@lru_cache(maxsize=8)
def _luts(h_bins: int, s_bins: int, v_bins: int) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    levels = np.arange(256)
    h = np.minimum(levels * h_bins // 180, h_bins - 1) * (s_bins * v_bins)
    s = (levels * s_bins >> 8) * v_bins
    v = levels * v_bins >> 8
    return h.astype(np.intp), s.astype(np.intp), v.astype(np.intp)


def hsv_bin_index(image: Image, bins: tuple[int, int, int]) -> NDArray[np.intp]:
    """[h, w] joint HSV bin of every pixel (OpenCV hue 0..179, saturation and value 0..255)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    lh, ls, lv = _luts(*bins)
    return np.asarray(lh[hsv[..., 0]] + ls[hsv[..., 1]] + lv[hsv[..., 2]], dtype=np.intp)


def hsv_histogram(
    image: Image, cells: NDArray[np.intp], n_cells: int, bins: tuple[int, int, int]
) -> NDArray[np.float32]:
    """[n_cells * bins] square-rooted (Hellinger) HSV histograms, one per grid cell.

    ``image`` and ``cells`` share a size; callers pass a half-size image, since
    colour statistics need far fewer pixels than edges. The square root makes
    cosine similarity a Hellinger kernel, so a few dominant colours do not swamp it.
    """
    n_bins = bins[0] * bins[1] * bins[2]
    hist = cell_histogram(hsv_bin_index(image, bins), cells, n_cells, n_bins)
    return np.sqrt(hist).ravel()
