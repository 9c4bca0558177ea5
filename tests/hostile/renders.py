"""A small bundle and a short real video for the ff-render reliability tests, and output checks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from numpy.typing import NDArray

from tests.hostile.bundles import build_small_bundle, write_small_pool
from tests.media import make_test_video, skimage_images

CLIP_FPS = 10.0
CLIP_IMAGES = 4  # one second each: 40 frames at 320x180
CLIP_FRAMES = int(CLIP_FPS * CLIP_IMAGES)
# Fixed seed: resumed and uninterrupted renders must choose the same images.
# Per-frame picks and the photos as they are: these tests compare frames with pool pictures (or grey).
RENDER_ARGS: list[str] = [
    "--coherence",
    "off",
    "--color-transfer",
    "off",
    "--seed",
    "7",
    "--quiet",
    "--checkpoint-batch",
    "4",
]


@dataclass(frozen=True)
class RenderMedia:
    pool: Path
    bundle: Path
    clip: Path


def make_render_media(folder: Path) -> RenderMedia:
    pool = folder / "pool"
    write_small_pool(pool)
    bundle = build_small_bundle(pool, folder / "bundle")
    clip = make_test_video(folder / "clip.mp4", skimage_images()[:CLIP_IMAGES], fps=CLIP_FPS, size=(320, 180))
    return RenderMedia(pool, bundle, clip)


def results_frames(out: Path) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = json.loads((out / "results.json").read_text())["frames"]
    return frames


def decoded_frames(mp4: Path) -> list[NDArray[np.uint8]]:
    """Every frame of a video file, BGR (raises if the file is not a complete, decodable video)."""
    with av.open(str(mp4)) as container:
        return [np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8) for frame in container.decode(video=0)]


def check_render_output(out: Path) -> dict[str, int]:
    """Every file in OUT that a user or a later run trusts is complete; returns what was found.

    Temporary files (hidden names) are allowed: nothing trusts them.
    """
    found = {"checkpoint_frames": 0, "results": 0, "mp4": 0, "jpegs": 0}
    checkpoint = out / "checkpoint.jsonl"
    if checkpoint.exists():
        data = checkpoint.read_bytes()
        lines = data.split(b"\n")
        # Complete lines are whole JSON records; only a last line without its newline may be cut.
        records = [json.loads(line) for line in lines[:-1]]
        assert not records or records[0]["type"] == "header"
        found["checkpoint_frames"] = sum(len(r["frames"]) for r in records if r["type"] == "frames")
    if (out / "results.json").exists():
        results = json.loads((out / "results.json").read_text())
        assert len(results["frames"]) == CLIP_FRAMES
        found["results"] = 1
    for mp4 in out.glob("*.mp4"):
        if mp4.name.startswith("."):
            continue
        assert len(decoded_frames(mp4)) == CLIP_FRAMES, mp4
        found["mp4"] += 1
    frames_dir = out / "matched_frames"
    if frames_dir.is_dir():
        for jpeg in sorted(frames_dir.iterdir()):
            if jpeg.name.startswith("."):
                continue
            image = cv2.imdecode(np.fromfile(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape == (180, 320, 3), jpeg
            found["jpegs"] += 1
    return found


def leftovers(out: Path) -> list[str]:
    """Hidden temporary files left in OUT (by killed runs)."""
    return sorted(
        os.path.relpath(os.path.join(folder, name), out)
        for folder, _, names in os.walk(out)
        for name in names
        if name.startswith(".") and name != ".ff-render.lock"
    )


def render_progress(out: Path) -> int:
    """How far a render into ``out`` has got: frames matched + frame pictures written (+1 once done)."""
    done = 0
    try:
        for line in (out / "checkpoint.jsonl").read_bytes().split(b"\n")[:-1]:
            record = json.loads(line)
            if record.get("type") == "frames":
                done += len(record["frames"])
    except (OSError, ValueError):
        pass
    frames_dir = out / "matched_frames"
    if frames_dir.is_dir():
        done += sum(1 for name in os.listdir(frames_dir) if not name.startswith("."))
    return done + (out / "results.json").exists()
