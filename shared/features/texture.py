"""Sobel texture: how much fine structure an image has, and where."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from shared.features.gradients import (
    Gradients,
    cell_histogram,
    cell_sums,
    gradients,
    half_resolution,
    image_histogram,
)


@lru_cache(maxsize=8)
def _magnitude_edges(bins: int) -> NDArray[np.float32]:
    # Log-spaced: texture energy spans orders of magnitude between sky and foliage.
    return np.geomspace(4.0, 1200.0, bins - 1).astype(np.float32)


@lru_cache(maxsize=8)
def _log_bin_line(bins: int) -> tuple[np.float32, np.float32]:
    """(scale, offset) with bin = floor(ln(magnitude) * scale + offset): edges[i-1] <= m < edges[i] is bin i.

    The edges are log-spaced, so a bin is a linear function of the log: one multiply-add per
    pixel instead of a search (searchsorted cost ~0.5 ms an image; a 2 MB lookup table of
    squared magnitudes, ~0.3 ms, most of it cache misses).
    """
    edges = _magnitude_edges(bins).astype(np.float64)
    step = (np.log(edges[-1]) - np.log(edges[0])) / (bins - 2)
    return np.float32(1 / step), np.float32(1 - np.log(edges[0]) / step)


def magnitude_bins(grads: Gradients, bins: int) -> NDArray[np.uint8]:
    """[h, w] texture bin (0..bins-1) of every pixel's Sobel magnitude."""
    scale, offset = _log_bin_line(bins)
    # Magnitudes below 1 (ln < 0) are far below the first edge: clamping them keeps the log finite.
    # numpy rather than cv2.log, whose result depended on memory alignment (see Gradients.magnitude).
    position = np.log(np.maximum(grads.magnitude, np.float32(1))) * scale + offset
    np.clip(position, 0, bins - 1, out=position)
    return position.astype(np.uint8)  # truncation is floor on values >= 0


def texture_histogram(grads: Gradients, cells: NDArray[np.intp], n_cells: int, bins: int) -> NDArray[np.float32]:
    """[n_cells * bins] square-rooted Sobel-magnitude histograms per cell."""
    return np.sqrt(cell_histogram(magnitude_bins(grads, bins).astype(np.intp), cells, n_cells, bins)).ravel()


def two_scale_texture(grads: Gradients, bins: int) -> NDArray[np.float32]:
    """[2 * bins]: whole-image magnitude histograms at full and half resolution (fine and coarse texture)."""
    fine = image_histogram(magnitude_bins(grads, bins), bins)
    half = gradients(half_resolution(grads.gray))
    coarse = image_histogram(magnitude_bins(half, bins), bins)
    return np.asarray(np.sqrt(np.concatenate([fine, coarse])), dtype=np.float32)


def cell_energy(
    grads: Gradients, cells: NDArray[np.intp], n_cells: int, pixels: NDArray[np.float32]
) -> NDArray[np.float32]:
    """[n_cells] mean log gradient magnitude per cell: a coarse map of where the detail is."""
    return cell_sums(np.log1p(grads.magnitude), cells, n_cells) / pixels
