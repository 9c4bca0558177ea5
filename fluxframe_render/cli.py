"""ff-render VIDEO BUNDLE OUT: thin command line over ``fluxframe_render.render.render``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from fluxframe_render.assign import ASSIGN_MODES
from fluxframe_render.render import DEFAULT_WEIGHTS, RenderOptions, RenderResult, render
from fluxframe_render.video import X264_PRESETS
from shared import __version__
from shared.cli_support import report_errors
from shared.errors import EXIT_USAGE

PROG = "ff-render"


class _OneLineErrors(click.Command):
    """Click's usage errors as one line (``ff-render: error: ...``, exit 2) instead of usage + hint."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as exc:
            click.echo(f"{PROG}: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
        except click.Abort:
            click.echo(f"{PROG}: interrupted", err=True)
            sys.exit(130)


def _summary(result: RenderResult) -> str:
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
    return (
        f"{PROG}: {result.frames} frames at {result.fps:g} fps{resumed}, {result.distinct_images} distinct images, "
        f"{result.repeats} repeats{held}{assign}{wider}, {result.total_seconds:.1f} s -> {where}"
    )


@click.command(
    cls=_OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100},
)
@click.argument("video", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--edge-weight", type=click.FloatRange(min=0), default=DEFAULT_WEIGHTS[0], help="Weight of edge similarity."
)
@click.option(
    "--texture-weight",
    type=click.FloatRange(min=0),
    default=DEFAULT_WEIGHTS[1],
    help="Weight of texture similarity.",
)
@click.option(
    "--color-weight",
    type=click.FloatRange(min=0),
    default=DEFAULT_WEIGHTS[2],
    help="Weight of colour similarity (weights are normalised to sum to 1; neural bundles ignore them).",
)
@click.option(
    "--search-depth",
    type=click.IntRange(min=1),
    default=10,
    help="Candidates per frame; without --no-repeat one of the top N is picked at random.",
)
@click.option(
    "--nprobe",
    type=click.IntRange(min=1),
    default=None,
    help="IVF bundles: lists searched per frame (more = better matches, slower) [default: the bundle's].",
)
@click.option("--no-repeat", is_flag=True, help="Use every image at most once: the best unused image per frame.")
@click.option(
    "--assign",
    type=click.Choice(ASSIGN_MODES),
    default="greedy",
    help="With --no-repeat: greedy gives each frame in turn its best unused image; global solves a window of "
    "frames as one assignment (best total score, early frames cannot take the best images of later ones).",
)
@click.option(
    "--assign-window",
    type=click.IntRange(min=0),
    default=0,
    help="With --assign global: frames solved together (rounded up to whole match batches); progress is "
    "checkpointed per window. 0: the whole clip.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Seed of the random pick (results.json records the one used) [default: random].",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="A frame whose best match scores below T holds the previous frame's image.",
)
@click.option(
    "--fps-override",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Output frame rate, reached by dropping frames; the duration stays [default: the video's].",
)
@click.option("--demo", is_flag=True, help="Quick trial: the first --demo-seconds of the video, --demo-images images.")
@click.option(
    "--demo-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    help="With --demo: seconds of video rendered.",
)
@click.option(
    "--demo-images",
    type=click.IntRange(min=1),
    default=1000,
    help="With --demo: use only the first N images of the bundle (by id).",
)
@click.option("--skip-output", is_flag=True, help="Compute the matches and results.json only; no video or pictures.")
@click.option(
    "--checkpoint-batch", type=click.IntRange(min=1), default=10, help="Save matching progress every N frames."
)
@click.option("--restart", is_flag=True, help="Discard OUT's checkpoint and match every frame again.")
@click.option(
    "--restart-if-changed",
    is_flag=True,
    help="Resume OUT's checkpoint if it has the same match options, else start over (instead of refusing).",
)
@click.option("--no-frames", is_flag=True, help="Do not write matched_frames/frame_NNNNNN.jpg.")
@click.option(
    "--save-samples",
    type=click.IntRange(min=0),
    default=0,
    help="Write N side-by-side frame/match pictures to comparison_samples/.",
)
@click.option("--sample-interval", type=click.IntRange(min=1), default=1, help="Output frames between two samples.")
@click.option(
    "--crf", type=click.IntRange(0, 51), default=20, help="H.264 quality: lower is better and bigger (18-28 usual)."
)
@click.option(
    "--preset",
    type=click.Choice(X264_PRESETS),
    default="veryfast",
    help="x264 speed preset: faster presets encode quicker, files get bigger at the same --crf.",
)
@click.option("--no-verify", is_flag=True, help="Skip the bundle's full sha256 check (sizes are still checked).")
@click.option(
    "--pool-root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the pool images are now, if moved since indexing [default: the bundle's pool root].",
)
@click.option("--quiet", is_flag=True, help="No progress bars and no summary line (warnings and errors still show).")
@click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")
@click.version_option(__version__, prog_name=PROG)
@click.pass_context
def main(
    ctx: click.Context,
    video: Path,
    bundle: Path,
    out: Path,
    edge_weight: float,
    texture_weight: float,
    color_weight: float,
    search_depth: int,
    nprobe: int | None,
    no_repeat: bool,
    assign: str,
    assign_window: int,
    seed: int | None,
    threshold: float,
    fps_override: float | None,
    demo: bool,
    demo_seconds: float,
    demo_images: int,
    skip_output: bool,
    checkpoint_batch: int,
    restart: bool,
    restart_if_changed: bool,
    no_frames: bool,
    save_samples: int,
    sample_interval: int,
    crf: int,
    preset: str,
    no_verify: bool,
    pool_root: Path | None,
    quiet: bool,
    debug: bool,
) -> None:
    """Replace every frame of VIDEO by the most similar image of BUNDLE; write the result to OUT.

    OUT receives VIDEO_matched.mp4 (H.264 with the source audio), matched_frames/,
    comparison_samples/, results.json and checkpoint.jsonl. Rerunning the same command
    resumes an interrupted render; changing only output options re-renders without
    matching again.

    Exit codes: 0 ok, 1 internal error, 2 bad usage, 3 bad input file, 4 bad or
    tampered bundle, 5 refused by existing state (checkpoint of other options, OUT in
    use), 6 neural model missing, 7 write failed, 130 interrupted.
    """

    def warn(message: str) -> None:
        click.echo(f"{PROG}: warning: {message}", err=True)

    if not demo:
        unused = [
            f"--{name.replace('_', '-')}"
            for name in ("demo_seconds", "demo_images")
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        ]
        if unused:
            warn(f"{' and '.join(unused)} only apply with --demo; ignored")
    if assign != "global" and ctx.get_parameter_source("assign_window") == click.core.ParameterSource.COMMANDLINE:
        warn("--assign-window only applies with --assign global; ignored")
    with report_errors(PROG, debug):
        options = RenderOptions(
            edge_weight=edge_weight,
            texture_weight=texture_weight,
            color_weight=color_weight,
            search_depth=search_depth,
            nprobe=nprobe,
            no_repeat=no_repeat,
            assign=assign,
            assign_window=assign_window,
            seed=seed,
            threshold=threshold,
            fps_override=fps_override,
            demo=demo,
            demo_seconds=demo_seconds,
            demo_images=demo_images,
            skip_output=skip_output,
            checkpoint_batch=checkpoint_batch,
            restart=restart,
            restart_if_changed=restart_if_changed,
            save_frames=not no_frames,
            save_samples=save_samples,
            sample_interval=sample_interval,
            crf=crf,
            preset=preset,
            verify=not no_verify,
            pool_root=pool_root,
            progress=not quiet,
        )
        result = render(video, bundle, out, options, on_warning=warn)
    if not quiet:
        click.echo(_summary(result))
