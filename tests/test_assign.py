"""--assign global: the assignment itself on real features, and through the real ff-render command line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from fluxframe_render.assign import WindowResult, assign_window, greedy_choices
from fluxframe_render.checkpoint import CHECKPOINT_NAME
from fluxframe_render.render import RenderOptions, render
from shared.errors import EXIT_USAGE
from shared.features.base import Block
from shared.search import Searcher, UsedSet
from tests.render_support import Media, assert_one_line_error, choices_record, make_media, results, run_cli
from tests.search_support import Pool, real_features, split_finish, tile

Candidates = tuple[NDArray[np.float32], NDArray[np.int64]]


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Pool:
    base, blocks = real_features(tmp_path_factory.mktemp("assign-real"))
    return Pool(tmp_path_factory.mktemp("assign-pool"), tile(base, blocks, 2000, seed=11), blocks, nlist=16)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Media:
    return make_media(tmp_path_factory.mktemp("assign-media"))


def scenes(pool: Pool, blocks: tuple[Block, ...], lengths: list[int], noise: float, seed: int) -> NDArray[np.float32]:
    """Frames in scenes: each scene a run of noisy views of one pool picture, as in a video."""
    rng = np.random.default_rng(seed)
    pictures = rng.choice(pool.vectors.shape[0], len(lengths), replace=False)
    rows = np.repeat(np.asarray(pool.vectors[pictures]), lengths, axis=0)
    jitter = rng.standard_normal(rows.shape, dtype=np.float32) * np.float32(noise / np.sqrt(rows.shape[1]))
    return split_finish(rows + jitter, blocks)


def solve(
    pool: Pool, queries: NDArray[np.float32], used: UsedSet, depth: int, batch: int = 16, ivf: bool = False
) -> tuple[Searcher, WindowResult]:
    searcher = Searcher(pool.vectors, ivf=pool.ivf if ivf else None, nprobe=4)
    scores, ids = searcher.search(queries, depth, used)

    def research(rows: NDArray[np.intp], k: int, excluded: UsedSet) -> Candidates:
        return searcher.search(queries[rows], k, excluded)

    return searcher, assign_window(scores, ids, used, research, batch=batch)


def assert_greedy(pool: Pool, queries: NDArray[np.float32], used: UsedSet, picks: NDArray[np.int64]) -> None:
    """``picks`` are greedy no-repeat's: what one exact search per frame, in order, finds.

    A search of a whole batch and of one row may round a score differently in the last
    bit, so two images within 1e-6 can swap places (and the frames after them follow
    suit): the same images in nearly every frame, and the same total score.
    """
    taken = used.copy()
    expected = []
    for row in range(queries.shape[0]):
        _, ids = Searcher(pool.vectors).search(queries[row : row + 1], 1, taken)
        expected.append(int(ids[0, 0]))
        taken.add(expected[-1])
    vectors = np.asarray(pool.vectors, dtype=np.float64)
    got_scores = np.einsum("qd,qd->q", queries, vectors[picks])
    want_scores = np.einsum("qd,qd->q", queries, vectors[expected])
    assert abs(got_scores.sum() - want_scores.sum()) < 1e-3
    assert np.mean(picks == np.asarray(expected)) > 0.95


@pytest.mark.parametrize("ivf", [False, True], ids=["exact", "ivf"])
def test_assignment_beats_greedy_and_never_repeats(pool: Pool, ivf: bool) -> None:
    queries = scenes(pool, pool.blocks, [30, 50, 20, 40], noise=0.25, seed=1)
    used = UsedSet(2000)
    used.add_many(np.random.default_rng(2).choice(2000, 300, replace=False))
    _, result = solve(pool, queries, used, depth=24, ivf=ivf)
    ids = result.image_ids
    assert np.unique(ids).size == ids.size == 140 and not used.bits[ids].any()
    assert np.unique(result.greedy_ids).size == 140 and not used.bits[result.greedy_ids].any()
    assert result.mean_score >= result.greedy_mean_score - 1e-9
    assert result.mean_score > result.greedy_mean_score + 1e-4, "scenes that share candidates leave room to gain"
    # Every reported score is the true score of the image (no made-up or random picks).
    np.testing.assert_allclose(result.scores, np.einsum("qd,qd->q", queries, np.asarray(pool.vectors)[ids]), atol=2e-6)
    if not ivf:
        # The comparison is real greedy: what one exact search per frame, in order, picks.
        assert_greedy(pool, queries, used, result.greedy_ids)


def test_static_shot_longer_than_the_candidate_lists(pool: Pool) -> None:
    """150 frames of one picture, 20 candidates each: the lists alone hold no full matching.

    As documented, greedy's picks (found by searching deeper in batches) complete the
    graph: every frame still gets its own image, none random, total never below greedy.
    """
    queries = scenes(pool, pool.blocks, [150], noise=0.02, seed=3)
    used = UsedSet(2000)
    searcher, result = solve(pool, queries, used, depth=20, batch=32)
    depth_ids = searcher.search(queries, 20, used)[1]
    assert np.unique(depth_ids).size < 150, "the candidate lists together hold fewer images than frames"
    ids = result.image_ids
    assert np.unique(ids).size == 150
    assert result.beyond_depth > 0
    assert result.mean_score >= result.greedy_mean_score - 1e-9
    assert_greedy(pool, queries, used, result.greedy_ids)


def test_greedy_choices_research_in_batches_only_when_candidates_run_out(pool: Pool) -> None:
    queries = scenes(pool, pool.blocks, [40], noise=0.02, seed=4)
    used = UsedSet(2000)
    searcher = Searcher(pool.vectors)
    scores, ids = searcher.search(queries, 10, used)
    calls: list[int] = []

    def research(rows: NDArray[np.intp], k: int, excluded: UsedSet) -> Candidates:
        calls.append(int(rows[0]))
        assert k >= rows.size and excluded.count >= rows[0]
        return searcher.search(queries[rows], k, excluded)

    _, picks = greedy_choices(scores, ids, used, research, batch=8)
    assert np.unique(picks).size == 40
    assert calls and calls[0] == 10, "the 11th frame of a static shot finds its 10 candidates taken"
    assert_greedy(pool, queries, used, picks)


# -- through ff-render -------------------------------------------------------------------------------


def test_global_through_the_cli_beats_greedy_with_zero_repeats(media: Media, tmp_path: Path) -> None:
    common = ["--no-repeat", "--fps-override", "11", "--skip-output"]
    greedy = run_cli(media.clip, media.bundle, tmp_path / "greedy", *common, "--quiet")
    assert greedy.code == 0, greedy.stderr
    run = run_cli(media.clip, media.bundle, tmp_path / "global", *common, "--assign", "global")
    assert run.code == 0, run.stderr
    data = results(tmp_path / "global")
    ids = [f["image_id"] for f in data["frames"]]
    assert len(ids) == 44 and len(set(ids)) == 44 and data["counts"]["repeats"] == 0
    a = data["assign"]
    assert a["mode"] == "global" and a["window"] == 0 and a["frames"] == 44
    assert a["mean_score"] >= a["greedy_mean_score"] and a["mean_score_gain"] > 0
    assert a["mean_score"] == pytest.approx(np.mean([f["score"] for f in data["frames"]]))
    # The comparison is the real greedy render of the same frames.
    assert a["greedy_mean_score"] == pytest.approx(results(tmp_path / "greedy")["assign"]["mean_score"], abs=1e-6)
    assert [f["greedy_score"] for f in data["frames"]] == pytest.approx(
        [f["score"] for f in results(tmp_path / "greedy")["frames"]], abs=1e-6
    )
    assert f"vs greedy {a['greedy_mean_score']:.4f} (+{a['mean_score_gain']:.4f})" in run.stdout
    assert data["match_options"]["assign"] == "global"


def test_global_needs_no_repeat_and_enough_images(media: Media, tmp_path: Path) -> None:
    run = run_cli(media.clip, media.bundle, tmp_path / "a", "--assign", "global")
    assert_one_line_error(run, EXIT_USAGE, "--assign global", "--no-repeat")
    # 60 frames, 48 images: no assignment exists, refused before any matching.
    run = run_cli(media.clip, media.bundle, tmp_path / "b", "--no-repeat", "--assign", "global")
    assert_one_line_error(run, EXIT_USAGE, "60 frames but only 48 images")
    warned = run_cli(media.clip, media.bundle, tmp_path / "c", "--no-repeat", "--fps-override", "5",
                     "--assign-window", "8", "--skip-output", "--quiet")  # fmt: skip
    assert warned.code == 0 and "--assign-window only applies with --assign global" in warned.stderr


def test_global_windows_resume_to_the_same_choices(media: Media, tmp_path: Path) -> None:
    """Windows of 16 frames are checkpointed whole; a run cut after the first window resumes to the same result."""
    options = RenderOptions(
        no_repeat=True, assign="global", assign_window=12, match_batch=8, fps_override=11.0, skip_output=True
    )
    reference = tmp_path / "reference"
    done = render(media.clip, media.bundle, reference, options)
    assert done.assign["window"] == 16 and done.repeats == 0
    lines = (reference / CHECKPOINT_NAME).read_text().splitlines()
    windows = [len(json.loads(line)["frames"]) for line in lines[1:-1]]
    assert windows == [16, 16, 12]
    # A crash after the first window's line: the checkpoint holds the header and that line.
    out = tmp_path / "cut"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_text("\n".join(lines[:2]) + "\n")
    resumed = render(media.clip, media.bundle, out, options)
    assert resumed.resumed_frames == 16 and resumed.matched_frames == 28
    assert choices_record(out) == choices_record(reference)
    # Whole-clip and per-window assignments are both complete matchings; the greedy figures are per window.
    assert resumed.assign["mean_score"] >= resumed.assign["greedy_mean_score"]


def test_global_with_threshold_holds_without_repeats(media: Media, tmp_path: Path) -> None:
    run = run_cli(media.clip, media.bundle, tmp_path / "out", "--no-repeat", "--assign", "global",
                  "--fps-override", "11", "--threshold", "0.72", "--skip-output", "--quiet")  # fmt: skip
    assert run.code == 0, run.stderr
    data = results(tmp_path / "out")
    frames = data["frames"]
    held = [f for f in frames if f["fallback"] == "held"]
    assert held and data["counts"]["repeats"] == 0
    for before, frame in itertools.pairwise(frames):
        if frame["fallback"] == "held":
            assert frame["image_id"] == before["image_id"] and frame["threshold_applied"]
    assert data["assign"]["frames"] == 44 - len(held)
