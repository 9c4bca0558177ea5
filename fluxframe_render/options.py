"""Every ff-render option, stated once: default, range, help and --help group (see shared/options.py).

``RenderOptions`` is what the Python API takes and what the command line is generated
from. Which of them the choices depend on (and so the checkpoint) is said in
render._Render.match_options; the others only change how the choices become output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fluxframe_render.assign import ASSIGN_MODES
from fluxframe_render.coherence import COHERENCE_MODES
from fluxframe_render.color_transfer import COLOR_MODES
from fluxframe_render.video import X264_PRESETS
from shared.cli_support import QUIET_HELP
from shared.errors import UsageError
from shared.features.base import DEFAULT_WEIGHTS
from shared.options import option, validate_fields

# Smooth and hold choose among at least this many candidates per frame: the look bench's setting.
COHERENCE_CANDIDATES = 32

MATCHING = "Matching"
LOOK = "Look"
REUSE = "No-repeat and reuse"
TILES = "Tiles"
OUTPUT = "Output"
RESUME = "Resume"
ADVANCED = "Advanced"


@dataclass(frozen=True)
class RenderOptions:
    """Every ff-render option; the command line's flags are generated from these fields."""

    # -- matching ---------------------------------------------------------------------------------
    edge_weight: float = option(DEFAULT_WEIGHTS["edge"], "Weight of edge similarity.", MATCHING, minimum=0)
    texture_weight: float = option(DEFAULT_WEIGHTS["texture"], "Weight of texture similarity.", MATCHING, minimum=0)
    color_weight: float = option(
        DEFAULT_WEIGHTS["color"],
        "Weight of colour similarity (weights are normalised to sum to 1; neural bundles ignore them).",
        MATCHING,
        minimum=0,
    )
    search_depth: int = option(
        10,
        f"Candidates per frame: --coherence off picks one of the top N at random (with --seed), hold and smooth "
        f"choose among at least {COHERENCE_CANDIDATES}.",
        MATCHING,
        minimum=1,
    )
    nprobe: int | None = option(
        None,
        "IVF bundles: lists searched per frame (more = better matches, slower).",
        MATCHING,
        minimum=1,
        default_text="the bundle's",
    )
    seed: int | None = option(
        None,
        "Seed of the random pick of --coherence off (results.json records the one used).",
        MATCHING,
        minimum=0,
        default_text="random, then kept",
    )
    threshold: float = option(
        0.0, "A frame whose best match scores below T holds the previous frame's image.", MATCHING, minimum=0, maximum=1
    )
    fps_override: float | None = option(
        None,
        "Output frame rate, reached by dropping frames; the duration stays.",
        MATCHING,
        minimum=0,
        min_open=True,
        default_text="the video's",
    )
    # -- the look ---------------------------------------------------------------------------------
    coherence: str = option(
        "smooth",
        "How images follow the video: off = each frame alone; hold = keep the image while it scores within "
        "--hold-margin of the best; smooth = the best sequence of each scene (Viterbi, --switch-cost).",
        LOOK,
        choices=COHERENCE_MODES,
    )
    hold_margin: float = option(
        0.05, "--coherence hold: keep the current image while its score is within this of the best.", LOOK, minimum=0
    )
    switch_cost: float = option(
        0.2,
        "--coherence smooth: summed score a switch of image must gain (higher = fewer switches).",
        LOOK,
        minimum=0,
    )
    color_transfer: str = option(
        "local",
        "Adapt each image's colours toward its frame: local (the frame's low-frequency layout of light and "
        "colour), global (mean/std in LAB) or off.",
        LOOK,
        choices=COLOR_MODES,
    )
    color_strength: float = option(
        0.35,
        "How far colour transfer moves an image's lightness toward its frame (0 = untouched).",
        LOOK,
        minimum=0,
        maximum=1,
    )
    color_chroma_strength: float = option(
        0.8,
        "How far it moves the colours (LAB a, b): further than the light, the photo keeps its structure.",
        LOOK,
        minimum=0,
        maximum=1,
    )
    color_grid: str = option("48x27", "--color-transfer local: cells of the colour layout, COLSxROWS.", LOOK)
    # -- reuse ------------------------------------------------------------------------------------
    no_repeat: bool = option(False, "Use every image at most once (the same as --max-uses 1).", REUSE)
    max_uses: int = option(
        0, "Times an image may be chosen (a run of frames holding it counts once); 0 = no limit.", REUSE, minimum=0
    )
    min_reuse_gap: int = option(0, "Frames before an image that was shown may come back.", REUSE, minimum=0)
    assign: str = option(
        "greedy",
        "With --no-repeat: greedy gives each frame in turn its best unused image; global solves a window of "
        "frames as one assignment (best total score; each frame alone, as --coherence off).",
        REUSE,
        choices=ASSIGN_MODES,
    )
    assign_window: int = option(
        0, "With --assign global: frames solved together (whole match batches); 0 = the whole clip.", REUSE, minimum=0
    )
    # -- tiles ------------------------------------------------------------------------------------
    tiles: str | None = option(
        None,
        "Build every frame from a grid of COLSxROWS pool images (e.g. 32x18) instead of one image.",
        TILES,
        metavar="COLSxROWS",
    )
    tile_max_uses: int = option(0, "--tiles: times one image may appear in a frame; 0 = no limit.", TILES, minimum=0)
    tile_distance: int = option(
        0, "--tiles: minimum distance in cells between two identical tiles of a frame.", TILES, minimum=0
    )
    tile_coherence: float = option(
        2.0,
        "--tiles: a cell keeps its image while that image stays within this colour distance (ΔE) of the best "
        "one, so the mosaic does not boil.",
        TILES,
        minimum=0,
    )
    tile_color_strength: float = option(
        0.0, "--tiles: colour transfer of each tile toward its cell (0..1).", TILES, minimum=0, maximum=1
    )
    # -- output -----------------------------------------------------------------------------------
    skip_output: bool = option(False, "Compute the matches and results.json only; no video or pictures.", OUTPUT)
    save_frames: bool = option(True, "Do not write matched_frames/frame_NNNNNN.jpg.", OUTPUT, off_flag="--no-frames")
    save_samples: int = option(
        0, "Write N side-by-side frame/match pictures to comparison_samples/.", OUTPUT, minimum=0
    )
    sample_interval: int = option(1, "Output frames between two samples.", OUTPUT, minimum=1)
    report: bool = option(True, "Do not write report.html.", OUTPUT, off_flag="--no-report")
    crf: int = option(20, "H.264 quality: lower is better and bigger (18-28 usual).", OUTPUT, minimum=0, maximum=51)
    preset: str = option(
        "veryfast", "x264 speed preset: faster presets encode quicker, bigger files.", OUTPUT, choices=X264_PRESETS
    )
    pool_root: Path | None = option(
        None, "Where the pool images are now, if moved since indexing.", OUTPUT, default_text="the bundle's pool root"
    )
    # -- resume -----------------------------------------------------------------------------------
    restart: bool = option(False, "Discard OUT's matches and match every frame again.", RESUME)
    restart_if_changed: bool = option(
        False, "Kept for batch jobs: changed match options always start over (earlier matches are kept).", RESUME
    )
    checkpoint_batch: int = option(10, "Save matching progress every N frames.", RESUME, minimum=1)
    # -- advanced ---------------------------------------------------------------------------------
    demo: bool = option(False, "Quick trial: the first --demo-seconds of the video, --demo-images images.", ADVANCED)
    demo_seconds: float = option(20.0, "With --demo: seconds of video rendered.", ADVANCED, minimum=0, min_open=True)
    demo_images: int = option(
        1000, "With --demo: use only the first N images of the bundle (by id).", ADVANCED, minimum=1
    )
    verify: bool = option(
        True, "Skip the bundle's full sha256 check (sizes are still checked).", ADVANCED, off_flag="--no-verify"
    )
    timings: bool = option(False, "Print the time each stage was busy and waiting.", ADVANCED)
    match_batch: int | None = option(
        None, "Frames per search call (default: enough for FAISS to use BLAS).", ADVANCED, minimum=1, hidden=True
    )
    progress: bool = option(True, QUIET_HELP, ADVANCED, off_flag="--quiet")

    def __post_init__(self) -> None:
        validate_fields(self)
        if self.assign == "global" and self.coherence != "off":
            # A global assignment gives every frame of a window its own image: per-frame by nature.
            object.__setattr__(self, "coherence", "off")
        rules: list[tuple[bool, str]] = [
            (
                self.assign != "global" or self.uses_limit == 1,
                "--assign global shares images out without repeats: it needs --no-repeat",
            ),
            (
                not (self.no_repeat and self.max_uses not in (0, 1)),
                f"--no-repeat means --max-uses 1; got --max-uses {self.max_uses} too",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise UsageError(message)
        parse_grid(self.color_grid, "--color-grid")
        if self.tiles is not None:
            parse_grid(self.tiles, "--tiles")

    @property
    def uses_limit(self) -> int:
        """Times an image may be chosen: 1 with --no-repeat, else --max-uses (0 = no limit)."""
        return 1 if self.no_repeat else self.max_uses

    @property
    def max_seconds(self) -> float | None:
        return self.demo_seconds if self.demo else None

    @property
    def image_limit(self) -> int | None:
        return self.demo_images if self.demo else None

    def weights(self) -> dict[str, float]:
        return {"edge": self.edge_weight, "texture": self.texture_weight, "color": self.color_weight}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pool_root"] = None if self.pool_root is None else str(self.pool_root)
        return data


def parse_grid(text: str, flag: str) -> tuple[int, int]:
    """ "COLSxROWS" -> (cols, rows), each 1..256; a clear one-line error otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"{flag} takes COLSxROWS, e.g. 32x18; got {text!r}")
    cols, rows = int(parts[0]), int(parts[1])
    if not (1 <= cols <= 256 and 1 <= rows <= 256):
        raise UsageError(f"{flag}: columns and rows must be within 1..256; got {text!r}")
    return cols, rows
