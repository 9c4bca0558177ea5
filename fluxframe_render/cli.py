"""ff-render VIDEO BUNDLE OUT: the command line, generated from RenderOptions (thin: parse, call, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from fluxframe_render.options import RenderOptions
from fluxframe_render.render import RenderResult, render
from shared import __version__
from shared.cli_support import report_errors
from shared.options import GroupedCommand, click_options, from_click, given_on_command_line

PROG = "ff-render"

EXAMPLES = (
    ("ff-render clip.mp4 photos.bundle out/", "Render with the look-alike defaults"),
    ("ff-render clip.mp4 photos.bundle out/ --tiles 32x18", "Build every frame from 32x18 small photos"),
    ("ff-render clip.mp4 photos.bundle out/ --no-repeat --coherence off", "Every frame a different photo"),
)


def summary(result: RenderResult) -> str:
    """The one line printed when a render ends."""
    where = result.video_path if result.video_path is not None else result.results_path
    resumed = f", {result.resumed_frames} from checkpoint" if result.resumed_frames else ""
    held = f", {result.held} held" if result.held else ""
    assign = ""
    if result.assign.get("mode") == "global":
        a = result.assign
        assign = (
            f", mean score {a['mean_score']:.4f} vs greedy {a['greedy_mean_score']:.4f} ({a['mean_score_gain']:+.4f})"
        )
    stats = result.search_stats
    wider = ""
    if stats.get("widened_rows") or stats.get("exact_fallback_rows"):
        # Frames whose probed IVF lists held too few unused images: a higher --nprobe avoids the detour.
        wider = f", IVF widened {stats['widened_rows']} / exact {stats['exact_fallback_rows']} searches"
    # A tile frame names only its most used tile: the mosaic's own figures replace switches and images.
    look = f"; {result.quality.line(choices=result.tiles is None)}" if result.quality is not None else ""
    if result.tiles is not None:
        t = result.tiles
        images = f"{t['grid']} tiles from {t['distinct_images']} distinct images"
        images += f", cells switching {t['cell_switch_rate']:.0%}"
        return (
            f"{PROG}: {result.frames} frames at {result.fps:g} fps{resumed}, {images}{look}, "
            f"{result.total_seconds:.1f} s -> {where}"
        )
    return (
        f"{PROG}: {result.frames} frames at {result.fps:g} fps{resumed}, mean score {result.mean_score:.3f}, "
        f"{result.distinct_images} distinct images, {result.repeats} repeats{held}{assign}{wider}{look}, "
        f"{result.total_seconds:.1f} s -> {where}"
    )


@click.command(
    cls=GroupedCommand,
    prog=PROG,
    examples=EXAMPLES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.argument("video", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click_options(RenderOptions)
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
@click.version_option(__version__, prog_name=PROG)
@click.pass_context
def main(ctx: click.Context, /, video: Path, bundle: Path, out: Path, debug: bool, **values: Any) -> None:
    """Replace every frame of VIDEO by images of BUNDLE; write the result to OUT.

    OUT receives VIDEO_matched.mp4 (H.264 with the source audio), report.html,
    matched_frames/, results.json and checkpoint.jsonl. Rerunning the same command
    resumes an interrupted render; changing only output options re-renders without
    matching again; changing match options matches again (the earlier matches are kept).

    Exit codes: 0 ok, 1 internal error, 2 bad usage, 3 bad input file, 4 bad or
    tampered bundle, 5 refused by existing state (OUT in use, damaged checkpoint),
    6 neural model missing, 7 write failed, 130 interrupted.
    """

    def warn(message: str) -> None:
        click.echo(f"{PROG}: warning: {message}", err=True)

    # Options that only apply with another one: say so rather than ignore them silently.
    for name, needs, applies in (
        ("demo_seconds", "--demo", bool(values.get("demo"))),
        ("demo_images", "--demo", bool(values.get("demo"))),
        ("assign_window", "--assign global", values.get("assign") == "global"),
        ("seed", "--coherence off", values.get("coherence") == "off" or values.get("assign") == "global"),
        ("threshold", "--coherence off", values.get("coherence") == "off" or values.get("assign") == "global"),
        ("hold_margin", "--coherence hold", values.get("coherence") == "hold"),
        ("switch_cost", "--coherence smooth", values.get("coherence") == "smooth"),
    ):
        if not applies and given_on_command_line(ctx, name):
            warn(f"--{name.replace('_', '-')} only applies with {needs}; ignored")
    with report_errors(PROG, debug):
        options = from_click(RenderOptions, values)
        result = render(video, bundle, out, options, on_warning=warn)
    if options.timings:
        for phase, timings in result.timings.items():
            click.echo(f"{PROG}: {phase} stages ({timings.seconds:.2f} s):", err=True)
            for line in timings.lines():
                click.echo(f"  {line}", err=True)
    click.echo(summary(result))
