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

# Texture bins: log-spaced magnitudes from 4 to 1200 (texture energy spans orders of magnitude
# between sky and foliage): bin 0 below 4, bins-1 from 1200 up, log-even bins between.
LOWEST, HIGHEST = np.float32(4.0), np.float32(1200.0)


@lru_cache(maxsize=8)
def _log_bin_line(bins: int) -> tuple[int, np.float32]:
    """(origin, scale) with bin = floor((bits(m) - origin) * scale) + 1, bits = the float32's bit pattern.

    A positive float32's bit pattern read as an integer is 2^23 * (log2 of it + 127) to within
    0.09 octave (exact at powers of two, linear between): a log for the price of an integer
    subtraction. numpy's log cost 70 us an image (no SIMD here), a search 0.5 ms, a 2 MB lookup
    table of squared magnitudes 0.3 ms (cache misses), and OpenCV's log is not the same at
    every memory alignment (see Gradients.magnitude).
    """
    origin, top = (int(np.array([v], dtype=np.float32).view(np.int32)[0]) for v in (LOWEST, HIGHEST))
    return origin, np.float32((bins - 2) / (top - origin))


def magnitude_bins(grads: Gradients, bins: int) -> NDArray[np.uint8]:
    """[h, w] texture bin (0..bins-1) of every pixel's Sobel magnitude."""
    origin, scale = _log_bin_line(bins)
    position = (grads.magnitude.view(np.int32) - np.int32(origin)).astype(np.float32)
    position *= scale
    position += np.float32(1)
    np.clip(position, 0, bins - 1, out=position)  # a magnitude of 0 (bits 0) lands in bin 0
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
