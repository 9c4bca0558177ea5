"""Run the FluxFrame benchmarks: ``python -m tests.bench.run --out bench-out --readme docs/performance.md``.

Groups (``--only build,search,render,neural``; all by default):

- build: canny --jobs 2 beside decoding the same files alone (side by side), ff-index img/s per classic
  method with --jobs 1 and 2, decode share, peak RSS at 5k and 20k (timings from the bundles' build summaries);
- search: bundle open, exact and IVF ms/frame, IVF recall@10, no-repeat cost (20k, 100k; --large: 500k, 1M),
  and IVF recall with the clip's frames as queries (20k real JPEGs; --large: 500k, 1M);
- render: ff-render matching ms/frame and end-to-end frames/s on a 720p clip;
- tiles: ff-render --tiles 32x18 frames/s next to libx264 alone (20k; --large: 1M IVF), atlas size and
  build overhead, peak memory 20k vs 1M (tests/bench/tile_group.py);
- neural: efficientnet img/s and export time, when a model has been exported.

Data are generated on the spot and cached under .bench/. Results: a table on stdout,
OUT/results.json (groups not run this time keep their previous figures, and a plain run
keeps the last --large run's 500k/1M rows) and the README section between the bench markers.

On a shared machine, ``--wait-idle SECONDS`` waits for other work to leave the CPUs
before each measurement and takes a disturbed one again; every figure records how much
of the CPUs other work took meanwhile. ``--quick`` checks in a few minutes that the suite
runs; ``--report-only`` rewrites the table and README from OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_json
from tests.bench import (
    batch_bench,
    build_bench,
    data,
    dist_bench,
    neural_bench,
    render_bench,
    search_bench,
    tile_group,
)
from tests.bench.common import Context, Row, load_average, rows_as_dicts
from tests.bench.report import (
    current_section,
    keep_other_groups,
    limits_section,
    machine,
    measured_groups,
    readme_section,
    text_table,
    update_readme,
)


def update_group(ctx: Context) -> None:
    """--update of a 1 % change vs a full build, and Dask LocalCluster vs loky (tests/bench/dist_bench.py)."""
    pool = data.pool_dir(2_000 if ctx.quick else 20_000, ctx.jobs)
    for row in dist_bench.run(ctx.work, pool):
        ctx.add(Row(**row))  # type: ignore[arg-type]


def batch_group(ctx: Context) -> None:
    """make -j 2 renders: combined memory, vectors mapped not copied (tests/bench/batch_bench.py)."""
    for row in batch_bench.run(ctx.work):
        ctx.add(Row(**row))  # type: ignore[arg-type]


GROUPS: dict[str, Callable[[Context], None]] = {
    "build": build_bench.run,
    "search": search_bench.run,
    "render": render_bench.run,
    "tiles": tile_group.run,
    "neural": neural_bench.run,
    "distributed": update_group,
    "batch": batch_group,
}
RESULTS = "results.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for results.json and logs")
    parser.add_argument("--readme", type=Path, default=None, help="README whose bench section is replaced")
    parser.add_argument("--large", action="store_true", help="add 500K and 1M vector pools (long)")
    parser.add_argument("--quick", action="store_true", help="small sizes: check the suite runs (figures mean little)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measurement, wait up to SECONDS for other work to leave the CPUs",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="measure nothing: print and write the README from OUT/results.json"
    )
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups: {','.join(GROUPS)}")
    args = parser.parse_args(argv)
    args.groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    return args


def previous_groups(path: Path) -> dict[str, Any]:
    try:
        groups = json.loads(path.read_text()).get("groups", {})
    except (OSError, ValueError):
        return {}
    return groups if isinstance(groups, dict) else {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        out=out.absolute(), large=args.large, jobs=os.cpu_count() or 1, quick=args.quick, wait_idle=args.wait_idle
    )
    groups = previous_groups(out / RESULTS)
    failed = []
    started = time.perf_counter()
    for name in [] if args.report_only else args.groups:
        ctx.rows, ctx.details, ctx.busiest = [], {}, 0.0
        t0 = time.perf_counter()
        ctx.log(f"=== {name} ===")
        try:
            GROUPS[name](ctx)
        except Exception as exc:  # one group's failure must not hide the others' figures
            failed.append(name)
            traceback.print_exc()
            ctx.add(Row(name, "failed", "", None, "", note=f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))
        rows = rows_as_dicts(ctx.rows)
        previous = groups.get(name, {})
        kept = [] if args.large else [r for r in previous.get("rows", []) if r.get("large_only")]
        groups[name] = {
            "rows": rows + kept,
            "other_cpu_max_pct": ctx.busiest,
            "details": ctx.details.get(name, {}),
            "seconds": round(time.perf_counter() - t0, 1),
            "load_average": load_average(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "large": args.large,
            "quick": args.quick,  # a later run of other groups rewrites this group's sections from it
        }
        if kept:
            # A plain run does not measure the 500k/1M pools: their last --large figures stay.
            groups[name]["large_details"] = previous.get("large_details") or previous.get("details", {})
    ordered = {g: groups[g] for g in GROUPS if g in groups}
    results = {"machine": machine(), "large": args.large, "quick": args.quick, "out": str(out), "groups": ordered}
    if args.report_only:
        # The figures' own run decides how the README describes them.
        results["large"] = any(g.get("large") for g in ordered.values())
    else:
        atomic_write_json(out / RESULTS, results)
    all_rows = [r for g in ordered.values() for r in g["rows"]]
    print()
    print(text_table(all_rows))
    print(f"\nbenchmarks took {time.perf_counter() - started:.0f} s; figures in {out / RESULTS}")
    if args.readme is not None:
        # A quick run's small sizes would replace the whole table with figures not to quote:
        # it writes only the limits section, whose ratios come from one run.
        if not args.quick:
            measured = measured_groups(ordered, list(ordered) if args.report_only else args.groups)
            section = keep_other_groups(
                readme_section(results), current_section(args.readme), measured, list(GROUPS), large=args.large
            )
            if update_readme(args.readme, section):
                print(f"updated the bench section of {args.readme}")
            else:
                print(f"{args.readme} has no <!-- bench:start --> ... <!-- bench:end --> section; left unchanged")
        for group, names, section, repeated in (
            ("render", render_bench.LIMIT_ROWS, render_bench.LIMITS_SECTION, render_bench.LIMITS_REPEATED),
            ("build", build_bench.LIMIT_ROWS, build_bench.LIMITS_SECTION, build_bench.LIMITS_REPEATED),
        ):
            section_text = limits_section(results, names, group, repeated)
            if group in ordered and update_readme(args.readme, section_text, section):
                print(f"updated the {section} section of {args.readme}")
    missed = [r for r in all_rows if r["met"] is False]
    if missed:
        print(f"{len(missed)} target(s) missed: " + "; ".join(f"{r['name']} ({r['setting']})" for r in missed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
