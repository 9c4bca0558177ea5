"""Every `ff-index build` option, stated once: default, range, help and --help group (see shared/options.py).

``BuildCommandLine`` is what the command line is generated from; it turns into the two
objects the Python API takes: a FeatureSpec (what the vectors are) and BuildOptions (how
the build runs). Defaults are read from those two, so nothing is restated here, and the
ranges that are theirs (gem-p, aspect) are checked there, once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fluxframe_index.build import BuildOptions
from shared.cli_support import QUIET_HELP
from shared.images import DEFAULT_MAX_PIXELS
from shared.options import option, validate_fields
from shared.spec import ALL_METHODS, NEURAL_METHODS, POOLINGS, FeatureSpec, parse_aspect
from shared.tiles import DEFAULT_TILE_SIZE

INPUT = "Input"
FEATURES = "Features"
INDEX = "Index"
PARALLELISM = "Parallelism"
OUTPUT = "Output and run"

# The same meaning in ff-render: --quiet drops progress, never what needs attention.

EXAMPLES = (
    ("ff-index build ~/photos photos.bundle", "Index a folder of photos with the default (canny) features"),
    ("ff-index build ~/photos photos.bundle --update", "Add new and changed photos, drop deleted ones"),
    (
        "ff-index build ~/photos big.bundle --method spatial_color --index ivf --jobs 8",
        "A big pool: colour layout features, an IVF index, 8 worker processes",
    ),
)


@dataclass(frozen=True)
class BuildCommandLine:
    """The options of `ff-index build`, in --help order."""

    limit: int | None = option(None, "Index only the first N images (sorted by path).", INPUT, minimum=1, metavar="N")
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS,
        "Reject images whose header declares more pixels (decompression-bomb guard).",
        INPUT,
        minimum=1,
    )
    method: str = option(FeatureSpec.method, "Feature method (see `ff-index methods`).", FEATURES, choices=ALL_METHODS)
    comparison_size: int = option(
        FeatureSpec.comparison_size,
        "Long side in pixels that images and frames are compared at.",
        FEATURES,
        minimum=32,
        maximum=2048,
    )
    aspect: str = option("16:9", "Aspect W:H images are centre-cropped to; match your videos.", FEATURES)
    spatial_grid: str = option(
        str(FeatureSpec.spatial_grid),
        "Grid for spatial_pyramid and the neural methods (2 = 2x2, 3 = 3x3).",
        FEATURES,
        choices=("2", "3"),
    )
    seed: int = option(FeatureSpec.projection_seed, "spatial_color: seed of the random projection.", FEATURES)
    pooling: str = option(FeatureSpec.pooling, "Neural methods: grid-cell pooling.", FEATURES, choices=POOLINGS)
    gem_p: float = option(FeatureSpec.gem_p, "Neural methods: GeM power (1 = average, higher -> max).", FEATURES)
    onnx_model: Path | None = option(
        None, "Neural methods: an ONNX file to use instead of the exported one.", FEATURES, metavar="FILE"
    )
    cache_dir: Path | None = option(
        None, "Model cache folder.", FEATURES, default_text="$FLUXFRAME_CACHE or ~/.cache/fluxframe", metavar="DIR"
    )
    index: str = option(
        BuildOptions.index_kind,
        "flat: exact search over mmapped vectors; ivf: FAISS IVF index for big pools.",
        INDEX,
        choices=("flat", "ivf"),
    )
    ivf_nlist: int | None = option(
        None, "IVF lists.", INDEX, minimum=1, default_text="about 4*sqrt(N), a power of two", metavar="N"
    )
    jobs: int = option(
        os.cpu_count() or 1,
        "Worker processes extracting features.",
        PARALLELISM,
        minimum=1,
        maximum=256,
        default_text="all cores",
    )
    chunk_size: int = option(
        BuildOptions.chunk_size,
        "Images per worker task and per shard (resume granularity).",
        PARALLELISM,
        minimum=1,
        maximum=100_000,
    )
    backend: str = option(
        BuildOptions.backend,
        "joblib backend running the workers (dask needs the [dask] extra).",
        PARALLELISM,
        choices=("loky", "dask"),
    )
    scheduler: str | None = option(
        None,
        "Dask scheduler address (tcp://host:8786); default: a local cluster. The build waits up to 60 s "
        "(FLUXFRAME_DASK_WORKER_WAIT) for a worker to join.",
        PARALLELISM,
    )
    update: bool = option(
        False, "Update the existing BUNDLE: extract only new and changed files, drop deleted ones.", OUTPUT
    )
    replace: bool = option(
        False,
        "Replace a BUNDLE built with other feature options (refused without it: its renders would no longer match).",
        OUTPUT,
    )
    tile_size: int = option(
        DEFAULT_TILE_SIZE,
        "Side in px of each image's atlas tile for tile mode (3 x side^2 bytes an image); 0: no tile data.",
        OUTPUT,
        minimum=0,
        maximum=256,
    )
    progress: bool = option(True, QUIET_HELP, OUTPUT, off_flag="--quiet")
    timings: bool = option(
        False, "Print busy and waiting seconds per stage (scan, extract, write, seal) after the summary.", OUTPUT
    )

    def __post_init__(self) -> None:
        validate_fields(self)

    def feature_spec(self, model_sha256: str = "") -> FeatureSpec:
        """The FeatureSpec these options ask for (``model_sha256``: the neural model's, once resolved)."""
        aspect_w, aspect_h = parse_aspect(self.aspect)
        return FeatureSpec(
            method=self.method,
            comparison_size=self.comparison_size,
            aspect_w=aspect_w,
            aspect_h=aspect_h,
            spatial_grid=int(self.spatial_grid),
            pooling=self.pooling,
            gem_p=self.gem_p,
            projection_seed=self.seed,
            model_sha256=model_sha256,
        )

    @property
    def is_neural(self) -> bool:
        return self.method in NEURAL_METHODS

    def build_options(self, spec: FeatureSpec, model_file: Path | None = None) -> BuildOptions:
        return BuildOptions(
            model_file=model_file,
            spec=spec,
            jobs=self.jobs,
            chunk_size=self.chunk_size,
            limit=self.limit,
            index_kind=self.index,
            ivf_nlist=self.ivf_nlist,
            backend=self.backend,
            max_pixels=self.max_pixels,
            progress=self.progress,
            replace=self.replace,
            tile_size=self.tile_size or None,
        )
