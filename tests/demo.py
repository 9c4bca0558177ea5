"""`make demo`: build a bundle from images made out of package content, render a short clip.

Everything comes from packages already installed (scikit-image's and scikit-learn's
bundled photos); the tools are called through their command lines, as a user would.
Usage: python -m tests.demo OUT_DIR
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.media import make_test_video, skimage_images
from tests.pools import pool_variants, render_variant, write_jpeg

POOL_SIZE = 600
# The clip shows the first four colour photos (astronaut, coffee, chelsea, rocket); the pool is made
# of every other bundled picture, so each frame is rebuilt from pictures of something else.
CLIP_PICTURES = 4
CLIP_SECONDS_PER_IMAGE = 2.0
CLIP_SIZE = (640, 360)
CLIP_FPS = 12.0


def _run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def make_demo_pool(folder: Path) -> None:
    variants = [v for v in pool_variants(POOL_SIZE * 2, seed=7, max_side=1024) if v.source >= CLIP_PICTURES]
    for i, variant in enumerate(variants[:POOL_SIZE]):
        write_jpeg(folder / f"d{i % 4}" / f"img-{i:05d}.jpg", render_variant(variant))


def main(out_root: Path) -> int:
    bin_dir = Path(sys.executable).parent
    pool, bundle, video, out = out_root / "pool", out_root / "bundle", out_root / "clip.mp4", out_root / "render"
    out_root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (pool / ".complete").exists():
        shutil.rmtree(pool, ignore_errors=True)
        print(f"making a pool of {POOL_SIZE} photos (crops and variants of scikit-image/scikit-learn pictures)")
        make_demo_pool(pool)
        (pool / ".complete").write_text("ok\n")
    if not video.exists():
        print("making a clip with audio from four scikit-image photos (slow pans and zooms)")
        make_test_video(
            video, skimage_images(), fps=CLIP_FPS, seconds_per_image=CLIP_SECONDS_PER_IMAGE, size=CLIP_SIZE, audio=True
        )
    _run([str(bin_dir / "ff-index"), "build", str(pool), str(bundle), "--method", "spatial_pyramid"])
    _run(
        [
            str(bin_dir / "ff-render"),
            str(video),
            str(bundle),
            str(out),
            "--restart-if-changed",
            "--save-samples",
            "6",
            "--sample-interval",
            "15",
            "--seed",
            "1",
        ]
    )
    print(
        f"demo done in {time.perf_counter() - started:.0f} s: open {out}/clip_matched.mp4 "
        f"(frames in {out}/matched_frames, side-by-side samples in {out}/comparison_samples)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")))
