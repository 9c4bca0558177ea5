"""Per-frame plots as plain inline SVG: one panel per series, sharing a frame axis, with events marked.

Written by hand rather than with matplotlib: the plots are lines and marks on a frame axis,
a few kilobytes of SVG that any browser draws, and no plotting library has to be installed,
imported (matplotlib's import alone is about a second) or kept in step with.

A long clip is drawn per pixel column: when there are more frames than columns, each column
shows its frames' mean as the line and their min..max as a band, so the SVG stays small and a
single bad frame still shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from shared.report_html import text as escape

WIDTH = 960
PANEL_HEIGHT = 150
LEFT = 58
RIGHT = 14
PANEL_TOP = 26  # room for the panel's title above its box
PANEL_BOTTOM = 8
AXIS_HEIGHT = 34  # frame numbers and the axis label under the last panel
LEGEND_HEIGHT = 26

HELD_FILL = "#f6c27a"
CUT_STROKE = "#b3261e"
SWITCH_STROKE = "#3d5a80"
GRID_STROKE = "#e3e6ea"
TEXT_FILL = "#3b4148"


@dataclass(frozen=True)
class PlotSeries:
    """One panel: a value per frame (NaN where a frame has none)."""

    title: str
    values: NDArray[np.float64]
    color: str
    lower_is_better: bool = False


@dataclass(frozen=True)
class FrameMarks:
    """Per-frame events drawn on every panel (bool arrays as long as the series)."""

    switched: NDArray[np.bool_]
    held: NDArray[np.bool_]
    cut: NDArray[np.bool_]
    switch_label: str = "image switch"  # what a switch is (a tile render: its frame's most used tile changed)


def nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering low..high."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _value_range(values: NDArray[np.float64]) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 0.01)
    return low - pad, high + pad


def _label(value: float) -> str:
    return f"{value:.3g}"


def _columns(values: NDArray[np.float64], columns: int) -> tuple[NDArray[np.float64], ...]:
    """Per pixel column: the frame position, the mean, min and max of its frames (NaN-aware)."""
    n = values.size
    edges = np.linspace(0, n, columns + 1).round().astype(np.int64)
    centre, mean, low, high = (np.full(columns, np.nan) for _ in range(4))
    for column in range(columns):
        chunk = values[edges[column] : edges[column + 1]]
        finite = chunk[np.isfinite(chunk)]
        centre[column] = (edges[column] + edges[column + 1] - 1) / 2
        if finite.size:
            mean[column], low[column], high[column] = finite.mean(), finite.min(), finite.max()
    return centre, mean, low, high


def _points(xs: NDArray[np.float64], ys: NDArray[np.float64]) -> list[str]:
    return [f"{x:.1f},{y:.1f}" for x, y in zip(xs.tolist(), ys.tolist(), strict=True)]


def _polylines(xs: NDArray[np.float64], ys: NDArray[np.float64]) -> list[str]:
    """Point lists of the runs of finite values (a gap breaks the line)."""
    runs: list[str] = []
    current: list[str] = []
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        if math.isfinite(y):
            current.append(f"{x:.1f},{y:.1f}")
        elif current:
            runs.append(" ".join(current))
            current = []
    if current:
        runs.append(" ".join(current))
    return runs


def _runs(flags: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    padded = np.concatenate([[False], flags.astype(bool), [False]])
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    return [(int(a), int(b)) for a, b in zip(changes[::2], changes[1::2], strict=True)]


def _pixel_spans(spans: list[tuple[float, float]], low: float, high: float) -> list[tuple[float, float]]:
    """Spans clipped to low..high, at least 1.5 px wide, merged where they touch at pixel scale."""
    merged: list[tuple[float, float]] = []
    for x0, x1 in spans:
        x0, x1 = max(x0, low), min(max(x1, x0 + 1.5), high)
        if merged and x0 <= merged[-1][1] + 1.0:
            merged[-1] = (merged[-1][0], max(merged[-1][1], x1))
        else:
            merged.append((x0, x1))
    return merged


class _Panel:
    def __init__(self, top: float, frames: int) -> None:
        self.top = top + PANEL_TOP
        self.height = PANEL_HEIGHT - PANEL_TOP - PANEL_BOTTOM
        self.left = LEFT
        self.width = WIDTH - LEFT - RIGHT
        self.frames = frames

    def x(self, frame: float) -> float:
        span = max(self.frames - 1, 1)
        return self.left + self.width * frame / span

    def x_array(self, frames: NDArray[np.float64]) -> NDArray[np.float64]:
        span = max(self.frames - 1, 1)
        return self.left + self.width * frames / span

    def y_array(self, values: NDArray[np.float64], low: float, high: float) -> NDArray[np.float64]:
        return self.top + self.height * (1.0 - (values - low) / (high - low))


def _marks_svg(panel: _Panel, marks: FrameMarks) -> list[str]:
    parts: list[str] = []
    bottom = panel.top + panel.height
    step = panel.width / max(panel.frames - 1, 1)
    spans = _pixel_spans(
        [(panel.x(start) - step / 2, panel.x(end - 1) + step / 2) for start, end in _runs(marks.held)],
        panel.left,
        panel.left + panel.width,
    )
    if spans:
        # One path for all holds: a long clip with thousands of holds stays a few kilobytes.
        path = " ".join(f"M{x0:.1f} {panel.top:.1f}H{x1:.1f}V{bottom:.1f}H{x0:.1f}Z" for x0, x1 in spans)
        parts.append(f'<path class="held" d="{path}" fill="{HELD_FILL}" fill-opacity="0.45"/>')
    switch_columns = sorted({round(panel.x(float(i))) for i in np.flatnonzero(marks.switched)})
    if switch_columns:
        path = " ".join(f"M{x} {bottom:.1f}V{bottom - 10:.1f}" for x in switch_columns)
        parts.append(f'<path class="switches" d="{path}" stroke="{SWITCH_STROKE}" stroke-width="1.5"/>')
    cut_columns = sorted({round(panel.x(float(i))) for i in np.flatnonzero(marks.cut)})
    if cut_columns:
        path = " ".join(f"M{x} {panel.top:.1f}V{bottom:.1f}" for x in cut_columns)
        parts.append(f'<path class="cuts" d="{path}" stroke="{CUT_STROKE}" stroke-width="1.2" stroke-dasharray="4 3"/>')
    return parts


def _series_svg(panel: _Panel, series: PlotSeries) -> list[str]:
    values = np.asarray(series.values, dtype=np.float64)
    low, high = _value_range(values)
    parts = [
        f'<text x="{panel.left}" y="{panel.top - 8:.1f}" class="panel-title" font-weight="600" '
        f'fill="{TEXT_FILL}">{escape(series.title)}{" (lower is better)" if series.lower_is_better else ""}</text>'
    ]
    for tick in nice_ticks(low, high):
        y = float(panel.y_array(np.array([tick]), low, high)[0])
        parts.append(
            f'<line x1="{panel.left}" x2="{panel.left + panel.width}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID_STROKE}"/><text x="{panel.left - 6}" y="{y + 4:.1f}" text-anchor="end" '
            f'fill="{TEXT_FILL}">{_label(tick)}</text>'
        )
    columns = round(panel.width)
    if values.size > 2 * columns:
        centre, mean, lows, highs = _columns(values, columns)
        xs = panel.x_array(centre)
        finite = np.isfinite(mean)
        if finite.any():
            upper = _points(xs[finite], panel.y_array(highs[finite], low, high))
            lower = _points(xs[finite], panel.y_array(lows[finite], low, high))
            parts.append(
                f'<polygon class="band" points="{" ".join(upper + lower[::-1])}" fill="{series.color}" '
                'fill-opacity="0.18" stroke="none"/>'
            )
        line_x, line_y = xs, panel.y_array(mean, low, high)
    else:
        line_x = panel.x_array(np.arange(values.size, dtype=np.float64))
        line_y = panel.y_array(values, low, high)
    for points in _polylines(line_x, line_y):
        parts.append(
            f'<polyline class="series" points="{points}" fill="none" stroke="{series.color}" '
            'stroke-width="1.6" stroke-linejoin="round"/>'
        )
    return parts


def _legend(marks: FrameMarks) -> str:
    entries = [
        (f'<path d="M0 4V-8" stroke="{SWITCH_STROKE}" stroke-width="1.5"/>', marks.switch_label),
        (f'<rect x="-5" y="-9" width="12" height="12" fill="{HELD_FILL}" fill-opacity="0.6"/>', "threshold hold"),
        (f'<path d="M0 4V-9" stroke="{CUT_STROKE}" stroke-width="1.5" stroke-dasharray="3 2"/>', "scene cut"),
    ]
    counts = (int(marks.switched.sum()), int(marks.held.sum()), int(marks.cut.sum()))
    parts = []
    x = LEFT
    for (symbol, label), count in zip(entries, counts, strict=True):
        text = f"{label} ({count})"
        parts.append(
            f'<g transform="translate({x} 16)">{symbol}<text x="12" y="3" fill="{TEXT_FILL}">{escape(text)}</text></g>'
        )
        x += 34 + 7 * len(text)
    return "".join(parts)


def frame_plot_svg(series: Sequence[PlotSeries], marks: FrameMarks, *, title: str) -> str:
    """An <svg> element: one panel per series stacked over a shared frame axis, events marked on each.

    Every series and mark array must be as long as the clip; an empty clip gives a one-line note.
    """
    frames = int(marks.switched.size)
    if any(s.values.size != frames for s in series) or not (marks.held.size == marks.cut.size == frames):
        raise ValueError("every series and mark must have one value per frame")
    height = LEGEND_HEIGHT + PANEL_HEIGHT * len(series) + AXIS_HEIGHT
    parts = [
        f'<svg class="plot" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" font-family="system-ui, sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        _legend(marks),
    ]
    panel = _Panel(LEGEND_HEIGHT, frames)
    for index, one in enumerate(series):
        panel = _Panel(LEGEND_HEIGHT + PANEL_HEIGHT * index, frames)
        parts.append(
            f'<rect x="{panel.left}" y="{panel.top:.1f}" width="{panel.width}" height="{panel.height:.1f}" '
            f'fill="#fbfcfd" stroke="{GRID_STROKE}"/>'
        )
        parts.extend(_marks_svg(panel, marks))
        parts.extend(_series_svg(panel, one))
    axis_y = panel.top + panel.height
    for tick in nice_ticks(0, max(frames - 1, 0), 8):
        x = panel.x(tick)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{axis_y:.1f}" y2="{axis_y + 4:.1f}" stroke="{TEXT_FILL}"/>'
            f'<text x="{x:.1f}" y="{axis_y + 16:.1f}" text-anchor="middle" fill="{TEXT_FILL}">{int(tick)}</text>'
        )
    parts.append(
        f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{axis_y + 30:.1f}" text-anchor="middle" '
        f'fill="{TEXT_FILL}">output frame</text></svg>'
    )
    return "".join(parts)
