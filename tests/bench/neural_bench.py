"""Neural build throughput (EfficientNet-Lite0, ONNX Runtime) and model export time.

Runs only when ``ff-index methods`` reports efficientnet ready (an exported model in
the cache): the benchmark never exports into the user's cache. The export time is
measured into a throw-away cache folder, when the [export] extra (torch) is installed.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path
from typing import Any

from shared.features.registry import method_info
from tests.bench import data
from tests.bench.build_bench import measure
from tests.bench.common import Context, Row, child_dict, size_label

GROUP = "neural"
METHOD = "efficientnet"
POOL = 2_000


def export_once() -> dict[str, Any]:
    """Child process: export the model into a temporary cache; returns the seconds it took."""
    from fluxframe_index.export import export_model

    with tempfile.TemporaryDirectory(prefix="ffbench-export-") as tmp:
        started = time.perf_counter()
        path = export_model(METHOD, cache_dir=Path(tmp))
        seconds = time.perf_counter() - started
        size = path.stat().st_size
    return {"seconds": seconds, "bytes": size}


def run(ctx: Context) -> None:
    ready, command = method_info(METHOD).readiness()
    if not ready:
        ctx.add(Row(GROUP, f"{METHOD} img/s", "skipped", None, "", note=f"not exported; run `{command}` first"))
        return
    from shared.features.neural import resolve_model

    _, sha = resolve_model(METHOD)
    pool_n = 1_000 if ctx.quick else POOL
    pool = data.pool_dir(pool_n, ctx.jobs)
    runs = []
    for grid in (2, 3):
        ctx.log(f"building {METHOD} {grid}x{grid} on {size_label(pool_n)} JPEGs with --jobs 2")
        r = measure(ctx, pool, METHOD, 2, grid=grid, model_sha256=sha)
        runs.append(r)
        ctx.add(
            Row(
                GROUP,
                f"{METHOD} {grid}x{grid} img/s",
                f"{size_label(pool_n)} JPEGs, --jobs 2",
                r["img_per_s"],
                "img/s",
                note=f"peak RSS {r['peak_tree_rss_mb']:.0f} MB; {r['dim']}-d",
            )
        )
    ctx.detail(GROUP, "runs", runs)
    if importlib.util.find_spec("torch") is None:
        ctx.add(Row(GROUP, f"{METHOD} export", "skipped", None, "", note="needs the [export] extra (torch)"))
        return
    ctx.log(f"exporting {METHOD} to ONNX (throw-away cache)")
    exported = child_dict(ctx.isolated(GROUP, "tests.bench.neural_bench:export_once", {}))
    ctx.detail(GROUP, "export", exported)
    ctx.add(
        Row(
            GROUP,
            f"{METHOD} export to ONNX",
            "ff-index export-model, CPU torch",
            exported["seconds"],
            "s",
            note=f"{exported['bytes'] / 1e6:.1f} MB model; peak RSS {exported['peak_tree_rss_mb']:.0f} MB",
        )
    )
