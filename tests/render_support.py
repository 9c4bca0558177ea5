"""Helpers for the ff-render tests: small real bundles and videos, CLI runs, output checks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from fluxframe_index.build import BuildOptions, build_bundle
from fluxframe_render.cli import main as ff_render
from shared.spec import FeatureSpec
from tests.media import make_test_video, skimage_images
from tests.pools import make_pool

POOL_SIZE = 48
CLIP_FPS = 15.0
CLIP_SECONDS = 4  # four pictures, one second each: 60 frames at 320x180


@dataclass(frozen=True)
class Media:
    pool: Path
    bundle: Path
    clip: Path  # 320x180, 15 fps, 4 s, AAC audio
    frames: int


def make_media(folder: Path) -> Media:
    pool = folder / "pool"
    make_pool(pool, POOL_SIZE, max_side=640)
    bundle = folder / "bundle"
    build_bundle(pool, bundle, BuildOptions(spec=FeatureSpec(method="canny")))
    clip = make_test_video(folder / "clip.mp4", skimage_images()[:CLIP_SECONDS], fps=CLIP_FPS)
    return Media(pool, bundle, clip, int(CLIP_SECONDS * CLIP_FPS))


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        """stderr lines that are not progress-bar redraws."""
        return [line for line in self.stderr.replace("\r", "\n").splitlines() if line.startswith("ff-render")]


def run_cli(*args: str | Path) -> Run:
    result = CliRunner().invoke(ff_render, [str(a) for a in args], catch_exceptions=False)
    return Run(result.exit_code, result.stdout, result.stderr)


def assert_one_line_error(run: Run, code: int, *needles: str) -> str:
    """The run failed with ``code``, one ``ff-render: error:`` line, no traceback; returns the line."""
    assert run.code == code, (run.code, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("ff-render: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def choices_record(out: Path) -> dict[str, Any]:
    """results.json without the seconds the stages and phases took: what must be identical after a resume."""
    data = results(out)
    data.pop("timings")
    data.pop("elapsed")
    return data


LOOK_KEYS = ("ssim", "delta_e", "delta_e_fine", "photo_ssim")


def picks(out: Path) -> list[dict[str, Any]]:
    """results.json's frames without the look metrics (which only a render with output has)."""
    return [{k: v for k, v in frame.items() if k not in LOOK_KEYS} for frame in results(out)["frames"]]


def image_ids(out: Path) -> list[int]:
    return [int(frame["image_id"]) for frame in results(out)["frames"]]


def build_small_bundle(pool: Path, dest: Path, *, index_kind: str = "flat", nlist: int | None = None) -> Path:
    build_bundle(pool, dest, BuildOptions(spec=FeatureSpec(method="canny"), index_kind=index_kind, ivf_nlist=nlist))
    return dest
