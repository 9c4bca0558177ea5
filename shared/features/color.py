"""HSV colour histograms (the colour block of every classic method)."""

from __future__ import annotations

from collections.abc import Sequence
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


def hsv_histograms(
    images: Sequence[Image], cells: NDArray[np.intp], n_cells: int, bins: tuple[int, int, int]
) -> NDArray[np.float32]:
    """[n, n_cells * bins] square-rooted (Hellinger) HSV histograms, one per grid cell of each image.

    ``images`` and ``cells`` share a size; callers pass half-size images, since
    colour statistics need far fewer pixels than edges. The square root makes
    cosine similarity a Hellinger kernel, so a few dominant colours do not swamp it.
    The smoothing and the root run once per batch: a dozen small numpy calls per image
    cost as much as the histogram itself. Both work element by element, so an image's
    row does not depend on the batch it came in.
    """
    n_bins = bins[0] * bins[1] * bins[2]
    hist = np.zeros((len(images), n_cells, n_bins), dtype=np.float32)
    for i, image in enumerate(images):
        if n_cells == 1:
            # One cell: calcHist's uniform bins are exactly the lookup tables' (floor(v * bins / range))
            # at a third of the cost of indexing and bincount.
            hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
            counts = cv2.calcHist([hsv], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256])
            hist[i, 0] = np.asarray(counts, dtype=np.float32).ravel() / np.float32(max(float(counts.sum()), 1e-9))
        else:
            hist[i] = cell_histogram(hsv_bin_index(image, bins), cells, n_cells, n_bins)
    smoothed = _spread_saturation_value(hist.reshape(len(images) * n_cells, *bins))
    return np.sqrt(smoothed).reshape(len(images), n_cells * n_bins)


def _spread_saturation_value(hist: NDArray[np.float32]) -> NDArray[np.float32]:
    """[n_cells, H, S, V] histograms smoothed by [1, 2, 1] / 4 along S and V, mass kept.

    A brighter or darker copy (exposure, a video's gamma) moves most pixels one V or S
    bin; with hard bins its Hellinger similarity to the original fell to ~0.5 (no better
    than an unrelated picture's). Spreading each bin into its neighbours keeps it ~0.85
    while hue and coarse brightness still separate pictures. Hue is left sharp: it is
    what exposure changes least and what tells pictures apart most.
    """
    for axis in (2, 3):
        lower = [slice(None)] * 4
        upper = [slice(None)] * 4
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        out = hist * np.float32(0.5)
        out[tuple(upper)] += hist[tuple(lower)] * np.float32(0.25)
        out[tuple(lower)] += hist[tuple(upper)] * np.float32(0.25)
        first, last = [slice(None)] * 4, [slice(None)] * 4
        first[axis], last[axis] = slice(0, 1), slice(-1, None)
        # Mass pushed past either end stays in the end bin.
        out[tuple(first)] += hist[tuple(first)] * np.float32(0.25)
        out[tuple(last)] += hist[tuple(last)] * np.float32(0.25)
        hist = out
    return hist
