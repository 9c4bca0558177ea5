"""compare.html: the method comparison as one self-contained page (pictures inline, no script, no URL).

The page answers "which method for my pool?": the recommendation first, then each method's
cost and look in one table, then every frame beside each method's pick so the figures can
be checked by eye.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from fluxframe_index.compare_results import (
    CLOSE_TO_BEST,
    POOL_FOR_ESTIMATE,
    Comparison,
    MethodRun,
    Picture,
    duration_text,
)
from shared import __version__
from shared.atomic import atomic_write_bytes
from shared.report_html import figure_cards, img, page, section, table, text

# Table cells may break anywhere (long file names); method names and numbers must not.
_WHOLE = ' style="white-space: nowrap; overflow-wrap: normal"'


def _time(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def _picture(picture: Picture, alt: str) -> str:
    return img(picture.jpeg, "image/jpeg", alt=alt, css_class="thumb", size=picture.size)


def _verdict(comparison: Comparison) -> str:
    c = comparison
    cards = figure_cards(
        [
            ("methods compared", str(len(c.runs))),
            ("frames matched", str(len(c.frames))),
            ("pool images per method", f"{c.sample:,} of {c.pool_images:,}"),
            ("comparison took", duration_text(c.seconds)),
        ]
    )
    line = f'<p style="font-size: 17px; margin: 16px 0 0"><b>Recommendation:</b> {text(c.recommendation().line)}.</p>'
    return cards + line


def _methods_table(comparison: Comparison) -> str:
    runs = comparison.runs
    chosen = comparison.recommendation().method
    top = max((r.look for r in runs), default=0.0)

    def row(run: MethodRun) -> list[str]:
        tag = f'<br><span class="tag"{_WHOLE}>recommended</span>' if run.method == chosen else ""
        share = 100 * max(0.0, run.look) / top if top > 0 else 0.0
        return [
            f"<b{_WHOLE}>{text(run.method)}</b>{tag}",
            f"<span{_WHOLE}>{run.dim:,}</span>",
            f"{run.build_rate:,.0f}",
            text(duration_text(run.estimated_pool_seconds)),
            f"{run.match_ms_per_frame:.1f}",
            f"{run.mean('score'):.3f}",
            f"{run.mean('delta_e'):.1f}",
            f"{run.mean('ssim'):.3f}",
            f"<b>{run.look:.2f}</b>",
            f'<div class="bar" style="width: {share:.1f}%"></div>',
        ]

    header = [
        "method",
        "dims",
        "build img/s",
        f"{POOL_FOR_ESTIMATE // 1000}K images ≈",
        "match ms/frame",
        "mean score",
        "ΔE 16x9 ↓",
        "SSIM 64x36 ↑",
        "look ↑",
        "",
    ]
    skipped = "; ".join(f"{name} ({why})" for name, why in comparison.skipped)
    return table(header, [row(r) for r in runs]) + (
        f'<p class="note">Not compared: {text(skipped)}.</p>' if skipped else ""
    )


def _sheet(comparison: Comparison) -> str:
    runs = comparison.runs
    heads = ["frame", "source", *(r.method for r in runs)]
    cells = [f'<div class="head">{text(h)}</div>' for h in heads]
    for row, frame in enumerate(comparison.frames):
        cells.append(f'<div class="meta"><b>#{frame.position + 1}</b> · {text(_time(frame.time))}</div>')
        cells.append(_picture(frame.picture, f"frame {frame.position + 1} of the clip"))
        for run in runs:
            pick = run.picks[row]
            cells.append(
                "<div>"
                + _picture(pick.picture, f"{run.method}'s pick for frame {frame.position + 1}")
                + f'<div class="meta"><span class="name">{text(pick.name)}</span><br>'
                f"score {pick.score:.3f} · SSIM {pick.ssim:.2f} · ΔE {pick.delta_e:.1f}</div></div>"
            )
    width, height = comparison.frames[0].picture.size if comparison.frames else (16, 9)
    style = f"--pictures: {len(heads) - 1}; --thumb-aspect: {width} / {height}"
    return f'<div class="sheet" style="{style}">{"".join(cells)}</div>'


def render_page(comparison: Comparison) -> str:
    """The page as a string."""
    c = comparison
    weights = ", ".join(f"{name} {weight:g}" for name, weight in c.weights.items())
    sample = (
        f"all {c.sample:,} images of the pool"
        if c.sample >= c.pool_images
        else f"the same {c.sample:,} of the pool's {c.pool_images:,} images, evenly spread in path order"
    )
    methods_note = (
        f"Each method indexed {sample}, at the clip's aspect {c.aspect[0]}:{c.aspect[1]}. Build img/s is the "
        f"whole small build (scan, extraction, writing); the {POOL_FOR_ESTIMATE:,}-image estimate uses its "
        "per-image extraction time on the same workers. Match is describe + search, per frame. SSIM (higher is "
        "better) and ΔE (lower is better) compare each pick, cropped as ff-render shows it, with the frame; look "
        "averages the two, each scaled from random pictures (0) to the frame itself (1). The recommendation is "
        f"the best look, or the fastest to index {POOL_FOR_ESTIMATE:,} images within {CLOSE_TO_BEST:.0%} of it."
    )
    sheet_note = (
        f"{len(c.frames)} frames spread over the clip; each method's best match (weights {weights}), "
        "named by its path in the pool."
    )
    sections = [
        ("verdict", "Verdict", section("verdict", "Verdict", _verdict(c))),
        ("methods", "Methods", section("methods", "Methods", _methods_table(c), note=methods_note)),
        ("frames", "Frames", section("frames", "Frames and picks", _sheet(c), note=sheet_note)),
    ]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return page(
        "Which method for your pool?",
        f"{c.video.name} against {c.pool} · ff-index compare",
        sections,
        footer=f"FluxFrame {__version__} · ff-index compare · {stamp}",
    )


def write_page(comparison: Comparison, path: Path) -> None:
    atomic_write_bytes(path, render_page(comparison).encode("utf-8"))
