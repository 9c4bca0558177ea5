"""ff-render as a new user meets it: refusals that leave nothing behind, grouped help, totals in results.json."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from shared.errors import EXIT_USAGE
from tests.render_support import Media, assert_one_line_error, make_media, results, run_cli


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("render-cli-media"))


def _tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_refused_render_creates_nothing(media: Media, tmp_path: Path) -> None:
    out = tmp_path / "out"
    refused = run_cli(media.clip, media.bundle, out, "--no-repeat", "--quiet")
    assert_one_line_error(refused, EXIT_USAGE, "--no-repeat", "60 frames but only 48 images")
    assert not out.exists(), "a refused render must not even create OUT"
    # The corrected command is not blocked by anything the refused one left.
    fixed = run_cli(media.clip, media.bundle, out, "--no-repeat", "--fps-override", "11", "--skip-output", "--quiet")
    assert fixed.code == 0, fixed.stderr


def test_a_refused_render_leaves_an_existing_out_as_it_was(media: Media, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli(media.clip, media.bundle, out, "--skip-output", "--quiet").code == 0
    before = _tree(out)
    for args in (("--max-uses", "1"), ("--tiles", "0x3"), ("--color-grid", "big")):
        refused = run_cli(media.clip, media.bundle, out, *args, "--quiet")
        assert refused.code == EXIT_USAGE, (args, refused.stderr)
        assert _tree(out) == before, args


@pytest.mark.parametrize("where", ["pool", "bundle"])
def test_out_inside_the_pool_or_the_bundle_is_refused(media: Media, where: str) -> None:
    folder = media.pool if where == "pool" else media.bundle
    out = folder / "renders" / "one"
    refused = run_cli(media.clip, media.bundle, out, "--quiet")
    assert_one_line_error(refused, EXIT_USAGE, f"inside the {where}", "choose a folder outside it")
    assert not (folder / "renders").exists()


def test_bare_command_prints_usage_and_how_to_get_help() -> None:
    run = run_cli()
    assert run.code == EXIT_USAGE
    assert "Usage: ff-render [OPTIONS] VIDEO BUNDLE OUT" in run.stderr
    assert "ff-render --help" in run.stderr and "Traceback" not in run.stderr


def test_help_is_grouped_with_examples() -> None:
    text = run_cli("--help").stdout
    headings = [line.rstrip(":") for line in text.splitlines() if line and not line.startswith(" ") and line[-1] == ":"]
    for group in ("Matching", "Look", "No-repeat and reuse", "Tiles", "Output", "Resume", "Advanced", "Examples"):
        assert group in headings, (group, headings)
    assert text.count("$ ff-render ") >= 3
    # Each option sits under the group its field declares, once.
    assert text.count("--coherence [") == 1 and text.index("--coherence [") > text.index("\nLook:")


def test_results_have_totals_and_no_internal_values(media: Media, tmp_path: Path) -> None:
    run = run_cli(media.clip, media.bundle, tmp_path, "--coherence", "off", "--seed", "2", "--no-frames")
    assert run.code == 0, run.stderr
    data = results(tmp_path)
    counts, frames = data["counts"], data["frames"]
    scores = [f["score"] for f in frames]
    assert counts["mean_score"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
    assert counts["min_score"] == pytest.approx(min(scores), abs=1e-6)
    assert counts["distinct_images"] == len({f["image_id"] for f in frames})
    assert data["pool_root"] == str(media.pool.resolve()) or Path(data["pool_root"]).resolve() == media.pool.resolve()
    most = data["most_used"]
    assert most and all((media.pool / m["path"]).is_file() for m in most)
    assert [m["uses"] for m in most] == sorted((m["uses"] for m in most), reverse=True)
    assert not {"k", "match_batch"} & set(data["match_options"]), "internal values stay in the checkpoint"
    assert all(len(repr(f["time"])) <= 8 for f in frames), "times are rounded for people"
    assert f"mean score {counts['mean_score']:.3f}" in run.stdout
    assert "look: SSIM" in run.stdout
