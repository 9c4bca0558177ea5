"""OUT/report.html: what a render looks like, in one self-contained page.

The render feeds a ReportBuilder frame by frame, in order. The builder keeps a small record
per frame (for the plots and figures) and thumbnails of a bounded number of frames only: a
sample spread evenly over the clip plus the frames where the image switches, paced so that
a clip that switches on every frame still gets rows from its end. Full frames are never
kept: each chosen picture is shrunk and JPEG-encoded the moment it arrives.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from shared import __version__
from shared.atomic import atomic_write_bytes
from shared.report_html import (
    Image,
    encode_jpeg,
    figure_cards,
    img,
    key_value_table,
    page,
    resize_to_width,
    section,
    table,
    text,
)
from shared.report_svg import FrameMarks, PlotSeries, frame_plot_svg

THUMB_WIDTH = 240
MAX_ROWS = 60  # contact-sheet rows, sampled and switch rows together
SAMPLED_ROWS = 20  # rows spread evenly over the clip when no sample interval is given
TILE_ZOOM_QUALITY = 92
SCORE_COLOR = "#3d5a80"
SSIM_COLOR = "#2a9d8f"
DELTA_E_COLOR = "#c8553d"


@dataclass(frozen=True)
class TileFigures:
    """A tile render's own totals. Its frame records name only each frame's most used tile, so
    image switches and distinct images counted from them say little about a mosaic."""

    grid: str  # COLSxROWS
    cells: int  # cells of one frame
    cell_switch_rate: float  # share of cells showing another image than in the frame before
    distinct_tiles: int  # pool images used anywhere in the clip
    most_used: Sequence[tuple[str, int]]  # image names and the cells they fill over the clip


@dataclass(frozen=True)
class FrameRecord:
    """What the report knows of one output frame."""

    index: int  # output frame number
    time: float  # seconds from the start of the output
    image_id: int
    image_name: str  # the pool file's path relative to the pool root
    score: float  # match score of the chosen image
    ssim: float | None  # output vs source frame (None when the render computed no look metrics)
    delta_e: float | None
    switched: bool  # the image differs from the previous frame's
    held: bool  # below the threshold: the previous image was held
    cut: bool  # a scene cut starts at this frame


@dataclass(frozen=True)
class _Thumb:
    jpeg: bytes
    size: tuple[int, int]


@dataclass(frozen=True)
class _Row:
    record: FrameRecord
    source: _Thumb | None
    output: _Thumb | None
    photo: _Thumb | None


def _thumb(image: Image | None) -> _Thumb | None:
    if image is None:
        return None
    small = resize_to_width(image, THUMB_WIDTH)
    return _Thumb(encode_jpeg(small), (int(small.shape[1]), int(small.shape[0])))


def format_time(seconds: float) -> str:
    """12.4 s, 3:05.2 or 1:02:03.4."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{int(minutes)}:{rest:04.1f}"
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}:{int(minutes):02d}:{rest:04.1f}"


def _mean(values: array[float]) -> float | None:
    known = np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0)
    known = known[np.isfinite(known)]
    return float(known.mean()) if known.size else None


class _FrameSeries:
    """Every frame's figures in flat arrays: about 30 bytes a frame, so an hour of video costs a few MB."""

    def __init__(self) -> None:
        self.score, self.ssim, self.delta_e = array("d"), array("d"), array("d")
        self.switched, self.held, self.cut = bytearray(), bytearray(), bytearray()
        self.image_ids: set[int] = set()
        self.names: Counter[str] = Counter()
        self.last_index: int | None = None
        self.last_time = 0.0

    def append(self, record: FrameRecord) -> None:
        self.score.append(record.score)
        self.ssim.append(math.nan if record.ssim is None else record.ssim)
        self.delta_e.append(math.nan if record.delta_e is None else record.delta_e)
        self.switched.append(record.switched)
        self.held.append(record.held)
        self.cut.append(record.cut)
        self.image_ids.add(record.image_id)
        self.names[record.image_name] += 1
        self.last_index, self.last_time = record.index, record.time


def _shown(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


class ReportBuilder:
    """Collects a render's frames in order and writes report.html.

    ``wants_thumbnails`` tells the caller which frames need pictures, so frames that are not
    shown are never resized or encoded; ``add_frame`` takes every frame's record (pictures
    only where wanted; others are ignored).
    """

    def __init__(
        self, title: str, total_frames: int, sample_every: int | None = None, *, max_rows: int = MAX_ROWS
    ) -> None:
        if total_frames < 0 or (sample_every is not None and sample_every < 1) or max_rows < 1:
            raise ValueError("total_frames >= 0, sample_every >= 1 and max_rows >= 1 are needed")
        self.title = title
        self.total_frames = total_frames
        expected = max(total_frames, 1)
        self.sample_every = sample_every or max(1, math.ceil(expected / min(SAMPLED_ROWS, max_rows)))
        self._sampled_cap = min(max_rows, math.ceil(expected / self.sample_every))
        # Whatever the even sample leaves of the cap goes to switches, paced over the clip.
        self._switch_cap = max_rows - self._sampled_cap
        self._frames = _FrameSeries()
        self._rows: list[_Row] = []
        self._sampled_rows = 0
        self._switch_rows = 0

    def _is_sampled(self, index: int) -> bool:
        return index % self.sample_every == 0 and self._sampled_rows < self._sampled_cap

    def _switch_allowed(self, index: int) -> bool:
        if self._switch_rows >= self._switch_cap:
            return False
        # An eighth of the switch rows can be spent ahead of pace (a burst of switches early in a
        # calm clip); the rest come as the clip goes on.
        slack = max(1.0, self._switch_cap / 8)
        paced = slack + self._switch_cap * (index + 1) / max(self.total_frames, index + 1)
        return self._switch_rows < paced

    def wants_thumbnails(self, index: int, switched: bool) -> bool:
        """Whether frame ``index`` gets a contact-sheet row (a pure question: asking twice is safe)."""
        return self._is_sampled(index) or (switched and self._switch_allowed(index))

    def add_frame(self, record: FrameRecord, source: Image | None, output: Image | None, photo: Image | None) -> None:
        """Record frame ``record.index`` (frames come in increasing order); pictures as they are, any size."""
        last = self._frames.last_index
        if last is not None and record.index <= last:
            raise ValueError(f"frame {record.index} after frame {last}: frames come in order")
        pictures = (source, output, photo)
        if any(p is not None for p in pictures) and self.wants_thumbnails(record.index, record.switched):
            if self._is_sampled(record.index):
                self._sampled_rows += 1
            else:
                self._switch_rows += 1
            self._rows.append(_Row(record, *(_thumb(p) for p in pictures)))
        self._frames.append(record)

    def most_used(self, count: int = 10) -> list[tuple[str, int]]:
        """The ``count`` images shown in most frames, with their frame counts (for ``write``)."""
        return self._frames.names.most_common(count)

    # -- the page -------------------------------------------------------------------------------

    def _figures(self, tiles: TileFigures | None) -> str:
        f = self._frames
        frames = len(f.score)
        switches = sum(f.switched)
        head = [("frames", f"{frames:,}"), ("duration", format_time(f.last_time) if frames else "—")]
        look = [
            ("mean score", _shown(_mean(f.score))),
            ("mean SSIM to source", _shown(_mean(f.ssim))),
            ("mean ΔE to source", _shown(_mean(f.delta_e), 1)),
        ]
        if tiles is not None:
            choices = [
                ("tile grid", f"{tiles.grid} ({tiles.cells:,} cells)"),
                ("cells switching", f"{tiles.cell_switch_rate:.1%} a frame"),
                ("distinct tiles", f"{tiles.distinct_tiles:,}"),
            ]
            return figure_cards(head + choices + look)
        choices = [
            ("image switches", f"{switches:,} ({switches / frames:.0%})" if frames else "0"),
            ("distinct images", f"{len(f.image_ids):,}"),
        ]
        rest = [("threshold holds", f"{sum(f.held):,}"), ("scene cuts", f"{sum(f.cut):,}")]
        return figure_cards(head + choices + look + rest)

    def _sheet(self) -> str:
        has_photo = any(row.photo is not None for row in self._rows)
        heads = ["frame", "source", "output"] + (["matched photo"] if has_photo else [])
        cells = [f'<div class="head">{text(h)}</div>' for h in heads]
        for row in self._rows:
            r = row.record
            tags = "".join(
                f'<span class="tag{" " + css if css else ""}">{label}</span>'
                for flag, label, css in ((r.switched, "switch", ""), (r.held, "held", "held"), (r.cut, "cut", "cut"))
                if flag
            )
            look = " · ".join(
                f"{label} {value:{spec}}"
                for label, value, spec in (("SSIM", r.ssim, ".2f"), ("ΔE", r.delta_e, ".1f"))
                if value is not None
            )
            cells.append(
                f'<div class="meta"><b>#{r.index}</b> · {text(format_time(r.time))}<br>'
                f'<span class="name">{text(r.image_name)}</span><br>score {r.score:.3f}<br>'
                f"{look + '<br>' if look else ''}{tags}</div>"
            )
            for thumb, what in ((row.source, "source"), (row.output, "output"), (row.photo, "photo")):
                if what == "photo" and not has_photo:
                    continue
                cells.append(
                    img(thumb.jpeg, "image/jpeg", alt=f"{what} of frame {r.index}", css_class="thumb", size=thumb.size)
                    if thumb is not None
                    else "<div></div>"
                )
        # Every picture sits in a box of the video's shape, so rows line up whatever the photos' shapes.
        frame_thumb = next((t for row in self._rows for t in (row.output, row.source) if t is not None), None)
        aspect = f"{frame_thumb.size[0]} / {frame_thumb.size[1]}" if frame_thumb else "16 / 9"
        style = f"--pictures: {len(heads) - 1}; --thumb-aspect: {aspect}"
        return f'<div class="sheet" style="{style}">{"".join(cells)}</div>'

    def _plots(self, tiles: bool) -> str:
        f = self._frames

        def series(values: array[float]) -> NDArray[np.float64]:
            return np.frombuffer(values, dtype=np.float64) if len(values) else np.zeros(0)

        panels = [PlotSeries("match score", series(f.score), SCORE_COLOR)]
        ssim, delta_e = series(f.ssim), series(f.delta_e)
        if np.isfinite(ssim).any():
            panels.append(PlotSeries("SSIM to the source frame", ssim, SSIM_COLOR))
        if np.isfinite(delta_e).any():
            panels.append(PlotSeries("ΔE to the source frame", delta_e, DELTA_E_COLOR, lower_is_better=True))

        def flags(values: bytearray) -> NDArray[np.bool_]:
            return np.frombuffer(bytes(values), dtype=np.uint8).astype(bool)

        switch = "most used tile changed" if tiles else "image switch"
        marks = FrameMarks(switched=flags(f.switched), held=flags(f.held), cut=flags(f.cut), switch_label=switch)
        return frame_plot_svg(panels, marks, title=f"{self.title}: score and look per frame")

    @staticmethod
    def _most_used(most_used: Sequence[tuple[str, int]], total: int, unit: str = "frames") -> str:
        """The images shown most, each with its count of ``unit`` and its share of ``total`` of them."""
        if not most_used:
            return '<p class="note">no images</p>'
        top = max(count for _, count in most_used) or 1
        rows = [
            (
                str(rank),
                text(name),
                f"{count:,}",
                f"{count / total:.1%}" if total else "—",
                f'<div class="bar" style="width: {100 * count / top:.1f}%"></div>',
            )
            for rank, (name, count) in enumerate(most_used, start=1)
        ]
        return table(["#", "image", unit, "share", ""], rows)

    def html(
        self,
        summary: Mapping[str, Any],
        options: Mapping[str, Any],
        bundle: Mapping[str, Any],
        most_used: Sequence[tuple[str, int]],
        tile_zoom: Image | None = None,
        tiles: TileFigures | None = None,
    ) -> str:
        """The page as a string (``write`` saves it); a tile render passes its ``tiles`` figures."""
        frames = len(self._frames.score)
        switches = sum(self._frames.switched)
        sampled = self._sampled_rows
        switch_rows = (
            f"{self._switch_rows} where a frame's most used tile changed"
            if tiles is not None
            else f"{self._switch_rows} of the {switches:,} image switches"
        )
        sheet_note = (
            f"{len(self._rows)} of {frames:,} frames: {sampled} spread over the clip (every "
            f"{self.sample_every}) and {switch_rows}."
        )
        if tiles is not None:
            used = self._most_used(tiles.most_used, frames * tiles.cells, "cells")
        else:
            used = self._most_used(most_used, frames)
        sections = [
            ("glance", "At a glance", section("glance", "At a glance", self._figures(tiles))),
            ("sheet", "Contact sheet", section("sheet", "Contact sheet", self._sheet(), note=sheet_note)),
            (
                "plots",
                "Per frame",
                section(
                    "plots",
                    "Per frame",
                    self._plots(tiles is not None) if frames else '<p class="note">no frames</p>',
                    note="SSIM and ΔE compare each output frame with its source frame at small sizes.",
                ),
            ),
        ]
        if tile_zoom is not None:
            zoom = img(
                encode_jpeg(tile_zoom, TILE_ZOOM_QUALITY),
                "image/jpeg",
                alt="a zoomed crop of an output frame showing its tiles",
                css_class="zoom",
            )
            sections.append(
                ("tiles", "Tiles", section("tiles", "Tiles up close", zoom, note="A crop of one output frame."))
            )
        details = (
            f'<div class="columns"><div><h3>Summary</h3>{key_value_table(summary)}</div>'
            f"<div><h3>Options used</h3>{key_value_table(options)}</div></div>"
        )
        sections += [
            ("details", "Summary and options", section("details", "Summary and options", details)),
            ("images", "Most-used images", section("images", "Most-used images", used)),
            ("bundle", "Bundle", section("bundle", "Bundle", key_value_table(bundle))),
        ]
        subtitle = f"FluxFrame render report · {frames:,} frames"
        footer = f"Written by FluxFrame {__version__}. One file: no scripts, nothing fetched."
        return page(self.title, subtitle, sections, footer)

    def write(
        self,
        path: Path,
        summary: dict[str, Any],
        options: dict[str, Any],
        bundle: dict[str, Any],
        most_used: list[tuple[str, int]],
        tile_zoom: Image | None = None,
        tiles: TileFigures | None = None,
    ) -> None:
        """Write the page to ``path`` atomically (a reader never sees half a report)."""
        document = self.html(summary, options, bundle, most_used, tile_zoom, tiles)
        atomic_write_bytes(Path(path), document.encode("utf-8"))


def tile_zoom_crop(frame: Image, grid: tuple[int, int], tiles_across: int = 6) -> Image:
    """The centre of a tile-mosaic frame, ``tiles_across`` tiles wide, for the report's "Tiles" section.

    ``grid`` is (columns, rows) of the mosaic; the crop keeps the frame's aspect and whole tiles
    where the frame divides evenly. The page enlarges it without smoothing, so tiles stay sharp.
    """
    height, width = frame.shape[:2]
    columns, rows = grid
    if columns < 1 or rows < 1 or tiles_across < 1:
        raise ValueError("the grid and tiles_across must be positive")
    across = min(tiles_across, columns)
    down = max(1, min(rows, round(across * rows / columns)))
    tile_w, tile_h = width / columns, height / rows
    left_tile, top_tile = (columns - across) // 2, (rows - down) // 2
    x0, x1 = round(left_tile * tile_w), round((left_tile + across) * tile_w)
    y0, y1 = round(top_tile * tile_h), round((top_tile + down) * tile_h)
    return np.ascontiguousarray(frame[y0:y1, x0:x1])
