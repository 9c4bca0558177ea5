"""shared.quality: the look metrics on real pictures."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from shared.quality import QualityTracker, Thumbnails, delta_e, ssim
from tests.media import skimage_images
from tests.pools import colour_images

Frame = np.ndarray


def _at(image: Frame, size: tuple[int, int]) -> Frame:
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def test_delta_e_is_cie76_in_true_lab_units() -> None:
    # sRGB red and blue: Lab (53.24, 80.09, 67.20) and (32.30, 79.19, -107.86), ΔE76 = 176.3.
    red = np.zeros((90, 160, 3), np.uint8)
    red[..., 2] = 255
    blue = np.zeros((90, 160, 3), np.uint8)
    blue[..., 0] = 255
    a, b = Thumbnails.of(red), Thumbnails.of(blue)
    assert delta_e(a.lab_coarse, b.lab_coarse) == pytest.approx(176.3, abs=0.3)
    assert delta_e(a.lab_fine, b.lab_fine) == pytest.approx(176.3, abs=0.3)


def test_same_picture_at_two_sizes_scores_alike_and_different_pictures_do_not() -> None:
    astronaut, coffee = colour_images()[:2]
    big, small = Thumbnails.of(_at(astronaut, (1280, 720))), Thumbnails.of(_at(astronaut, (640, 360)))
    assert ssim(big.grey, small.grey) > 0.95
    assert delta_e(big.lab_coarse, small.lab_coarse) < 1.0
    other = Thumbnails.of(_at(coffee, (1280, 720)))
    assert ssim(big.grey, other.grey) < 0.3
    assert delta_e(big.lab_coarse, other.lab_coarse) > 15


def test_ssim_is_skimage_structural_similarity() -> None:
    pictures = [Thumbnails.of(p).grey for p in colour_images()[:4]]
    for a in pictures:
        for b in pictures:
            reference = structural_similarity(a, b, data_range=255)  # type: ignore[no-untyped-call]
            assert ssim(a, b) == pytest.approx(reference, abs=1e-9)


def test_tracker_counts_switches_images_and_flicker() -> None:
    pictures = [_at(p, (320, 180)) for p in skimage_images()[:3]]
    source = pictures[0]
    # The source shifts a little every frame, so it has a motion of its own to compare with.
    sources = [np.roll(source, 2 * i, axis=1) for i in range(6)]
    held, alternating = QualityTracker(), QualityTracker()
    for i, frame in enumerate(sources):
        held.add(frame, pictures[1], None, 7, 0.5)
        record = alternating.add(frame, pictures[1 + i % 2], pictures[1 + i % 2], 1 + i % 2, 0.25 + 0.1 * i)
        assert record.switched == (i > 0)
        assert record.photo_ssim == pytest.approx(1.0)
    still = held.summary()
    assert (still.switches, still.switch_rate, still.distinct_images) == (0, 0.0, 1)
    assert still.output_change == 0.0 and still.flicker == 0.0
    assert still.mean_photo_ssim is None
    jumping = alternating.summary()
    assert (jumping.switches, jumping.switch_rate, jumping.distinct_images) == (5, 1.0, 2)
    assert jumping.mean_score == pytest.approx(np.mean([0.25 + 0.1 * i for i in range(6)]))
    assert jumping.source_change > 0
    assert jumping.flicker == pytest.approx(jumping.output_change / jumping.source_change)
    assert jumping.flicker is not None and jumping.flicker > 3
    # A frame equal to its source: perfect scores.
    exact = QualityTracker().add(source, source, None, 0, 1.0)
    assert exact.ssim == pytest.approx(1.0)
    assert (exact.delta_e, exact.delta_e_fine) == (0.0, 0.0)


def test_a_still_source_has_no_flicker_ratio_but_both_raw_means() -> None:
    source, photo = (_at(p, (320, 180)) for p in skimage_images()[:2])
    tracker = QualityTracker()
    for i in range(4):
        tracker.add(source, np.roll(photo, 5 * i, axis=0), None, 3, 0.5)
    summary = tracker.summary()
    assert summary.source_change == 0.0
    assert summary.output_change > 0
    assert summary.flicker is None
    assert "still source" in summary.line()


def test_the_photo_of_each_frame_is_measured_even_when_held_photos_are_reused() -> None:
    """A held photo's thumbnails are kept while the same array comes back, never for another photo."""
    pictures = [_at(p, (320, 180)) for p in skimage_images()[:3]]
    tracker = QualityTracker()
    held = [tracker.add(pictures[0], pictures[2], pictures[1], 1, 0.5) for _ in range(2)]
    other = tracker.add(pictures[0], pictures[2], pictures[2], 2, 0.5)
    first = held[0].photo_ssim
    assert first is not None and first == held[1].photo_ssim and first < 0.9
    assert other.photo_ssim == pytest.approx(1.0)
