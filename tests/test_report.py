"""report.html: which frames get thumbnails, what the page holds, and how a real browser shows it."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from fluxframe_render.report import MAX_ROWS, FrameRecord, ReportBuilder, TileFigures, tile_zoom_crop
from shared.report_html import Image
from shared.report_svg import FrameMarks, PlotSeries, frame_plot_svg, nice_ticks
from tests.browser import find_chromium, open_page
from tests.media import skimage_images
from tests.report_support import build_report, render_for_report

SCREENSHOT = Path("/tmp/report.png")


@pytest.fixture(scope="module")
def picture() -> Image:
    """A real 320x180 frame (the astronaut), to pass where a frame is expected."""
    image = skimage_images()[0]
    return np.asarray(cv2.resize(image, (320, 180), interpolation=cv2.INTER_AREA), dtype=np.uint8)


def _record(index: int, *, switched: bool = False, name: str = "a.jpg", fps: float = 25.0) -> FrameRecord:
    return FrameRecord(
        index=index,
        time=index / fps,
        image_id=index if switched else 0,
        image_name=name,
        score=0.8 + 0.1 * np.sin(index / 7),
        ssim=0.2,
        delta_e=30.0,
        switched=switched,
        held=False,
        cut=False,
    )


def _feed(builder: ReportBuilder, frames: int, switch_every: int, picture: Image) -> list[int]:
    """Feed frames, switching every ``switch_every``; returns the indices that got a row."""
    rows = []
    for index in range(frames):
        switched = index > 0 and index % switch_every == 0
        wanted = builder.wants_thumbnails(index, switched)
        assert builder.wants_thumbnails(index, switched) == wanted, "asking twice must not change the answer"
        if wanted:
            rows.append(index)
        builder.add_frame(_record(index, switched=switched), *((picture,) * 3 if wanted else (None,) * 3))
    return rows


def test_a_clip_that_switches_every_frame_gets_capped_rows_from_start_to_end(picture: Image) -> None:
    frames = 3000
    rows = _feed(ReportBuilder("t", frames), frames, 1, picture)
    assert len(rows) == MAX_ROWS
    # Switch rows are paced over the clip, not spent on its first 60 frames.
    assert max(rows) > 0.9 * frames
    assert sum(index < frames / 2 for index in rows) <= 0.6 * MAX_ROWS


def test_every_switch_of_a_calm_clip_gets_a_row_next_to_an_even_sample(picture: Image) -> None:
    frames = 500
    builder = ReportBuilder("t", frames)
    rows = _feed(builder, frames, 37, picture)
    switches = [i for i in range(1, frames) if i % 37 == 0]
    assert set(switches) <= set(rows)
    sampled = [i for i in rows if i % builder.sample_every == 0]
    assert sampled[0] == 0 and len(sampled) == -(-frames // builder.sample_every)
    assert builder.html({}, {}, {}, []).count('class="thumb"') == 3 * len(rows)


def test_pictures_for_frames_not_wanted_are_ignored(picture: Image) -> None:
    builder = ReportBuilder("t", 100, sample_every=50)
    for index in range(100):
        builder.add_frame(_record(index), picture, picture, picture)
    assert builder.html({}, {}, {}, []).count('class="thumb"') == 3 * 2  # frames 0 and 50


def test_a_tile_render_without_photos_gets_two_picture_columns_and_its_zoom(picture: Image) -> None:
    builder = ReportBuilder("tiles", 4, sample_every=2)
    for index in range(4):
        builder.add_frame(_record(index), picture, picture, None)
    page = builder.html({}, {}, {}, [], tile_zoom=tile_zoom_crop(picture, (16, 9)))
    assert "matched photo" not in page and "--pictures: 2" in page
    assert page.count('class="thumb"') == 2 * 2 and page.count('class="zoom"') == 1


def test_a_tile_render_shows_its_mosaic_figures_not_its_frames_most_used_tile() -> None:
    builder = ReportBuilder("tiles", 4)
    for index in range(4):
        builder.add_frame(_record(index, switched=index == 2), None, None, None)
    tiles = TileFigures("8x6", 48, 0.125, 37, [("x.jpg", 30), ("y.jpg", 12)])
    page = builder.html({}, {}, {}, [("a.jpg", 4)], tiles=tiles)
    assert "8x6 (48 cells)" in page and "12.5% a frame" in page and ">37<" in page
    # Most-used images count cells: 30 of 4 x 48 cells, not frames of a frame-level image.
    assert "x.jpg" in page and "15.6%" in page and "a.jpg" not in page
    assert "image switches" not in page and "threshold holds" not in page and "image switch (" not in page
    assert "most used tile changed (1)" in page
    # Without tile figures, the frame-level ones.
    plain = builder.html({}, {}, {}, [("a.jpg", 4)])
    assert "image switches" in plain and "cells switching" not in plain and "a.jpg" in plain


def test_most_used_counts_the_frames_each_image_is_shown_in() -> None:
    builder = ReportBuilder("t", 6)
    for index, name in enumerate(["b.jpg", "a.jpg", "b.jpg", "c.jpg", "b.jpg", "a.jpg"]):
        builder.add_frame(_record(index, name=name), None, None, None)
    assert builder.most_used(2) == [("b.jpg", 3), ("a.jpg", 2)]


def test_frames_out_of_order_are_refused() -> None:
    builder = ReportBuilder("t", 10)
    builder.add_frame(_record(3), None, None, None)
    with pytest.raises(ValueError, match="in order"):
        builder.add_frame(_record(3), None, None, None)


def test_every_string_is_escaped_and_a_non_utf8_name_still_writes(tmp_path: Path, picture: Image) -> None:
    hostile = '<script>alert("x")</script> & "quoted" \udcff.jpg'  # \udcff: a non-UTF-8 byte, surrogateescaped
    builder = ReportBuilder('<b>title</b> & "more" \udcfe.mp4', 2)
    builder.add_frame(_record(0, name=hostile), picture, picture, None)
    builder.add_frame(_record(1, name=hostile), None, None, None)
    out = tmp_path / "report.html"
    builder.write(out, {"<k>": "<v>"}, {"opt": '"&'}, {"id": "<id>"}, [(hostile, 2)])
    page = out.read_text(encoding="utf-8")
    assert "<script" not in page and "<b>title" not in page and "<k>" not in page and "<id>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quoted&quot; \ufffd.jpg" in page
    assert "&lt;b&gt;title&lt;/b&gt; &amp; &quot;more&quot; \ufffd.mp4" in page  # in <title>, <h1> and the plot
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # written in place, no temporary left


def test_the_page_fetches_nothing_and_runs_nothing(tmp_path: Path, picture: Image) -> None:
    builder = ReportBuilder("t", 3)
    for index in range(3):
        builder.add_frame(_record(index, switched=index == 2), picture, picture, picture)
    page = builder.html({"a": 1}, {}, {}, [("a.jpg", 3)], tile_zoom=picture)
    assert "<script" not in page.lower()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith(("data:", "#")) for s in sources), sources
    assert "http" not in page and "url(" not in page


def test_a_long_clip_plot_stays_small_and_keeps_a_single_bad_frame() -> None:
    frames = 200_000
    scores = np.full(frames, 0.9)
    scores[123_457] = 0.1  # one bad frame among 200k
    marks = FrameMarks(np.ones(frames, bool), np.zeros(frames, bool), np.zeros(frames, bool))
    svg = frame_plot_svg([PlotSeries("score", scores, "#000")], marks, title="t")
    assert len(svg) < 120_000
    # The band of that frame's pixel column reaches the bottom of the value range.
    band = re.search(r'class="band" points="([^"]+)"', svg)
    assert band is not None
    ys = [float(p.split(",")[1]) for p in band.group(1).split()]
    assert max(ys) - min(ys) > 50


def test_a_frame_without_look_metrics_leaves_a_gap_not_a_zero() -> None:
    values = np.array([0.5, np.nan, np.nan, 0.6, 0.7])
    marks = FrameMarks(np.zeros(5, bool), np.zeros(5, bool), np.zeros(5, bool))
    svg = frame_plot_svg([PlotSeries("ssim", values, "#000")], marks, title="t")
    assert svg.count('class="series"') == 2


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(0.812, 0.967) == [0.85, 0.9, 0.95]
    assert nice_ticks(0, 2999, 8) == [0, 500, 1000, 1500, 2000, 2500]


def test_tile_zoom_crop_is_whole_tiles_from_the_centre() -> None:
    frame = np.zeros((720, 1280, 3), np.uint8)
    crop = tile_zoom_crop(frame, (32, 18), tiles_across=6)
    assert crop.shape == (120, 240, 3)  # 6 x 3 tiles of 40 x 40


@pytest.mark.slow
def test_report_of_a_real_render_shows_in_a_headless_browser(tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    rendered = render_for_report(tmp_path)
    builder, arguments = build_report(rendered)
    report = rendered.out / "report.html"
    builder.write(report, **arguments)
    rows = builder.html(**arguments).count('class="thumb"') // 3
    assert rows >= 10

    with open_page(report, tmp_path / "profile", chromium) as (page, log):
        page.wait_for_load_state("networkidle")
        assert log.console_errors == [] and log.page_errors == []
        plot = page.locator("svg.plot")
        assert plot.count() == 1 and plot.is_visible()
        box = plot.bounding_box()
        assert box is not None and box["width"] > 600 and box["height"] > 300
        thumbs = page.locator("img.thumb")
        assert thumbs.count() == 3 * rows
        assert thumbs.first.is_visible() and thumbs.last.is_visible()
        # Every thumbnail decoded (not a broken-image icon) and laid out with a real size.
        facts = thumbs.evaluate_all(
            "imgs => imgs.map(i => [i.complete && i.naturalWidth > 0, i.getBoundingClientRect().width,"
            " i.getBoundingClientRect().height])"
        )
        assert all(decoded and width > 50 and height > 20 for decoded, width, height in facts), facts
        assert page.locator("img.zoom").is_visible()
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        plot_shot = tmp_path / "plot.png"
        plot.screenshot(path=str(plot_shot))
    # Only the file itself was asked for: pictures and plots are inline.
    assert log.requests == [report.resolve().as_uri()] and log.blocked == []

    for shot, least_spread in ((SCREENSHOT, 30.0), (plot_shot, 10.0)):
        pixels = cv2.imread(str(shot))
        assert pixels is not None
        assert float(pixels.std()) > least_spread, f"{shot} looks blank"
    # The thumbnails were painted: the page's pixels hold the source frames' colours, not only the page's greys.
    page_pixels = cv2.imread(str(SCREENSHOT))
    assert page_pixels is not None and page_pixels.shape[0] > 2000
    saturation = cv2.cvtColor(page_pixels, cv2.COLOR_BGR2HSV)[:, :, 1]
    assert float((saturation > 100).mean()) > 0.05
