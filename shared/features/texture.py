"""Sobel texture: how much fine structure an image has, and where."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray

from shared.features.gradients import Gradients, cell_histogram, cell_sums, gradients


@lru_cache(maxsize=8)
def _magnitude_edges(bins: int) -> NDArray[np.float32]:
    # Log-spaced: texture energy spans orders of magnitude between sky and foliage.
    return np.geomspace(4.0, 1200.0, bins - 1).astype(np.float32)


def texture_histogram(grads: Gradients, cells: NDArray[np.intp], n_cells: int, bins: int) -> NDArray[np.float32]:
    """[n_cells * bins] square-rooted Sobel-magnitude histograms per cell."""
    idx = np.searchsorted(_magnitude_edges(bins), grads.magnitude).astype(np.intp)
    return np.sqrt(cell_histogram(idx, cells, n_cells, bins)).ravel()


def two_scale_texture(grads: Gradients, bins: int) -> NDArray[np.float32]:
    """[2 * bins]: magnitude histograms at full and half resolution (fine and coarse texture)."""
    whole = np.zeros(grads.gray.shape, dtype=np.intp)
    fine = texture_histogram(grads, whole, 1, bins)
    half = gradients(np.asarray(cv2.pyrDown(grads.gray), dtype=np.uint8))
    coarse = texture_histogram(half, np.zeros(half.gray.shape, dtype=np.intp), 1, bins)
    return np.concatenate([fine, coarse])


def cell_energy(
    grads: Gradients, cells: NDArray[np.intp], n_cells: int, pixels: NDArray[np.float32]
) -> NDArray[np.float32]:
    """[n_cells] mean log gradient magnitude per cell: a coarse map of where the detail is."""
    return cell_sums(np.log1p(grads.magnitude), cells, n_cells) / pixels
