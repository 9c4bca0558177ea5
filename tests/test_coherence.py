"""Temporal coherence (hold, smooth/Viterbi), reuse rules and scene cuts."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from fluxframe_render.coherence import (
    HoldParams,
    HoldSelector,
    Pick,
    SmoothParams,
    SmoothSelector,
    exact_scorer,
    hold,
    path_cost,
    smooth,
    viterbi,
)
from fluxframe_render.reuse import NO_IMAGE, ReuseLedger, ReuseRules, violations
from fluxframe_render.scenes import CutDetector, CutParams, scene_cuts
from shared.features.base import weight_query
from shared.features.registry import create_extractor
from shared.images import prepare_image
from shared.search import exact_search
from shared.spec import FeatureSpec
from tests.pools import colour_images


def _random_candidates(
    rng: np.random.Generator, frames: int, k: int, pool: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    ids = np.stack([rng.choice(pool, size=k, replace=False) for _ in range(frames)]).astype(np.int64)
    scores = rng.random((frames, k)).astype(np.float32)
    # Some empty slots, never a whole row.
    holes = rng.random((frames, k)) < 0.2
    holes[:, 0] = False
    ids[holes] = NO_IMAGE
    return scores, ids


def test_viterbi_equals_brute_force_over_every_path() -> None:
    rng = np.random.default_rng(7)
    for case in range(300):
        frames, k = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        scores, ids = _random_candidates(rng, frames, k, pool=5)
        switch_cost = float(rng.choice([0.0, 0.05, 0.3, 2.0]))
        free = rng.random(frames) < 0.3
        start = int(rng.integers(-1, 5))
        best_cost, best_path = np.inf, None
        for path in itertools.product(*[[int(i) for i in row if i >= 0] for row in ids]):
            cost = path_cost(scores, ids, np.array(path), switch_cost, free, start)
            if cost < best_cost - 1e-12:
                best_cost, best_path = cost, path
        found = viterbi(scores, ids, switch_cost, free=free, start=start)
        assert path_cost(scores, ids, found, switch_cost, free, start) == pytest.approx(best_cost, abs=1e-9), case
        assert tuple(found.tolist()) == best_path, case


def test_a_cut_makes_the_switch_free() -> None:
    # Frame 1's best (id 2) beats holding id 1 by 0.1: not worth a switch costing 0.5, unless frame 1 is a cut.
    scores = np.array([[0.9, 0.2], [0.8, 0.7]], dtype=np.float32)
    ids = np.array([[1, 2], [2, 1]], dtype=np.int64)
    assert viterbi(scores, ids, 0.5).tolist() == [1, 1]
    assert viterbi(scores, ids, 0.5, free=np.array([False, True])).tolist() == [1, 2]
    # The same through the streaming selector: the cut starts a new segment whose entry switch is free.
    vectors = np.eye(3, dtype=np.float32)
    for cut, expected in ((False, [1, 1]), (True, [1, 2])):
        selector = SmoothSelector(SmoothParams(0.5, shared_candidates=0), exact_scorer(vectors))
        picks = selector.push(vectors[0], scores[0], ids[0], cut=True)
        picks += selector.push(vectors[1], scores[1], ids[1], cut=cut)
        picks += selector.finish()
        assert [p.image_id for p in picks] == expected


def test_zero_switch_cost_is_the_best_of_every_frame() -> None:
    rng = np.random.default_rng(3)
    scores, ids = _random_candidates(rng, 200, 6, pool=40)
    path = viterbi(scores, ids, 0.0, start=int(ids[0, 0]))
    best = [
        int(row_ids[np.argmax(np.where(row_ids >= 0, row, -np.inf))]) for row, row_ids in zip(scores, ids, strict=True)
    ]
    assert path.tolist() == best


class _DriftingClip:
    """Query vectors that drift (a random walk) with jumps, searched exactly in a small pool."""

    def __init__(self, frames: int, pool: int, dim: int = 12, k: int = 6, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.vectors = rng.normal(size=(pool, dim)).astype(np.float32)
        self.vectors /= np.linalg.norm(self.vectors, axis=1, keepdims=True)
        steps = rng.normal(scale=0.15, size=(frames, dim))
        steps[rng.random(frames) < 0.02] *= 12  # jumps: scene cuts
        queries = np.cumsum(steps, axis=0).astype(np.float32)
        self.queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        self.scores, self.ids = exact_search(self.vectors, self.queries, k)
        self.cuts = scene_cuts(self.queries, CutParams(min_distance=0.3))

    def score_of(self, frame: int, image_id: int) -> float:
        return float(self.queries[frame] @ self.vectors[image_id])


def test_hold_keeps_within_the_margin_and_never_below_it() -> None:
    clip = _DriftingClip(400, 50)
    margin = 0.08
    picks = hold(clip.scores, clip.ids, HoldParams(margin), cuts=clip.cuts, score_of=clip.score_of)
    kept = 0
    for t, pick in enumerate(picks):
        best = float(clip.scores[t, 0])
        assert pick.score == pytest.approx(clip.score_of(t, pick.image_id), abs=1e-5)
        assert pick.score >= best - margin - 1e-6
        if t and pick.image_id != picks[t - 1].image_id:
            # A switch goes to the best, and only when the image on screen fell out of the margin (or at a cut).
            assert pick.image_id == int(clip.ids[t, 0])
            assert clip.cuts[t] or clip.score_of(t, picks[t - 1].image_id) < best - margin
        kept += pick.image_id != int(clip.ids[t, 0])
    assert kept > 0  # the margin did keep images that were not the best
    off = hold(clip.scores, clip.ids, HoldParams(0.0), cuts=clip.cuts, score_of=clip.score_of)
    assert [p.image_id for p in off] == clip.ids[:, 0].tolist()


def test_smooth_switches_less_than_off_for_a_small_score_loss() -> None:
    clip = _DriftingClip(400, 50)
    scorer = exact_scorer(clip.vectors)
    picks = smooth(clip.queries, clip.scores, clip.ids, SmoothParams(0.3), cuts=clip.cuts, scorer=scorer)
    path = np.array([p.image_id for p in picks])
    best_switches = int((np.diff(clip.ids[:, 0]) != 0).sum())
    assert int((np.diff(path) != 0).sum()) < best_switches / 2
    for pick in picks:
        assert pick.score == pytest.approx(clip.score_of(pick.frame, pick.image_id), abs=1e-5)


@pytest.mark.parametrize("rules", [ReuseRules(max_uses=1), ReuseRules(max_uses=2, min_gap=40), ReuseRules(min_gap=25)])
def test_reuse_rules_are_never_broken_over_a_long_clip_with_a_small_pool(rules: ReuseRules) -> None:
    # 1,500 frames, 30 images, every image a candidate of every frame: holding is always possible.
    clip = _DriftingClip(1500, 30, k=30, seed=1)
    scorer = exact_scorer(clip.vectors)
    smoothed = smooth(
        clip.queries, clip.scores, clip.ids, SmoothParams(0.2, window=100), cuts=clip.cuts, scorer=scorer, rules=rules
    )
    held = hold(clip.scores, clip.ids, HoldParams(0.05), cuts=clip.cuts, score_of=clip.score_of, rules=rules)
    for picks in (smoothed, held):
        ids = [p.image_id for p in picks]
        assert [p.frame for p in picks] == list(range(1500))
        assert violations(rules, ids) == []
        runs = 1 + int((np.diff(ids) != 0).sum())
        assert runs > 5  # the rules were exercised, not avoided by one endless hold
    assert violations(rules, clip.ids[:, 0].tolist())  # and the per-frame best would have broken them


def test_ledger_counts_a_held_image_as_one_use() -> None:
    ledger = ReuseLedger.replay(ReuseRules(max_uses=2, min_gap=3), [5, 5, 5, 6, 5, 7], pool_size=10)
    assert ledger.uses == {5: 2, 6: 1, 7: 1}
    # What a search leaves out on frame 6: 5 used up, 6 and 7 inside their gaps.
    assert np.flatnonzero(ledger.blocked.bits).tolist() == [5, 6, 7]
    assert not ledger.may_start(5, 6)
    assert ledger.allowed(7, 6)  # continuing the image on screen
    assert not ledger.may_start(6, 6) and ledger.may_start(6, 7)  # 6 last shown on frame 3: gap of 3 frames
    ledger.record(7)
    assert np.flatnonzero(ledger.blocked.bits).tolist() == [5, 7], "6's gap has passed by frame 7"


def test_blocked_set_matches_the_rules_over_a_long_random_clip() -> None:
    """The search's exclusion set is exactly the images that may not start a run, frame after frame."""
    rng = np.random.default_rng(3)
    rules = ReuseRules(max_uses=3, min_gap=5)
    ledger = ReuseLedger(rules, pool_size=30)
    for _ in range(400):
        frame = ledger.next_frame
        expected = [i for i in range(30) if not ledger.may_start(i, frame)]
        assert np.flatnonzero(ledger.blocked.bits).tolist() == expected
        allowed = [i for i in range(30) if ledger.allowed(i, frame)]
        stay = ledger.current if ledger.current in allowed and rng.random() < 0.5 else None
        ledger.record(stay if stay is not None else int(rng.choice(allowed)))


def test_a_resumed_selection_picks_identically() -> None:
    clip = _DriftingClip(600, 40, k=8, seed=2)
    scorer = exact_scorer(clip.vectors)
    rules = ReuseRules(max_uses=3, min_gap=20)
    params = SmoothParams(0.25, window=64)
    whole = smooth(clip.queries, clip.scores, clip.ids, params, cuts=clip.cuts, scorer=scorer, rules=rules)
    ids = [p.image_id for p in whole]
    # Resume at every segment start: a cut or a multiple of the window.
    starts = [t for t in range(1, 600) if clip.cuts[t] or t % params.window == 0]
    assert any(clip.cuts[1:]) and len(starts) > 9
    for s in starts:
        rest = smooth(
            clip.queries[s:],
            clip.scores[s:],
            clip.ids[s:],
            params,
            cuts=clip.cuts[s:],
            scorer=scorer,
            rules=rules,
            history=ids[:s],
        )
        assert [p.image_id for p in rest] == ids[s:]
        assert [p.frame for p in rest] == list(range(s, 600))
    held = hold(clip.scores, clip.ids, HoldParams(0.05), cuts=clip.cuts, score_of=clip.score_of, rules=rules)
    held_ids = [p.image_id for p in held]
    for s in (1, 77, 350):
        selector = HoldSelector(HoldParams(0.05), rules, history=held_ids[:s])
        again = [
            selector.choose(
                clip.scores[t], clip.ids[t], cut=bool(clip.cuts[t]), score_of=functools.partial(clip.score_of, t)
            ).image_id
            for t in range(s, 600)
        ]
        assert again == held_ids[s:]


def _shot(image: NDArray[np.uint8], frames: int) -> list[NDArray[np.uint8]]:
    """A slow zoom into a picture: continuous motion within one shot."""
    h, w = 360, 640
    base = cv2.resize(prepare_image(image, (w, h)), (w, h))
    out = []
    for j in range(frames):
        zoom = 1.0 + 0.25 * j / frames
        matrix = np.array([[zoom, 0, -(zoom - 1) * w / 2], [0, zoom, -(zoom - 1) * h / 2]])
        out.append(np.asarray(cv2.warpAffine(base, matrix, (w, h), flags=cv2.INTER_LINEAR), dtype=np.uint8))
    return out


def test_scene_cuts_of_real_shots_batch_by_batch_and_after_a_resume(tmp_path: Path) -> None:
    pictures = colour_images()
    frames = _shot(pictures[0], 30) + _shot(pictures[1], 30) + _shot(pictures[2], 30)
    frames[45] = frames[75]  # a one-frame flash of another shot: one cut at most, never a burst
    spec = FeatureSpec(method="canny")
    extractor = create_extractor(spec, tmp_path)
    prepared = [prepare_image(f, spec.prepared_size()) for f in frames]
    vectors = weight_query(
        extractor.extract(prepared), extractor.blocks, {"edge": 0.33, "texture": 0.33, "color": 0.34}
    )
    cuts = scene_cuts(vectors)
    found = np.flatnonzero(cuts).tolist()
    assert found[:2] == [0, 30] and found[-1] == 60
    assert len(found) <= 4 and not {46, 47}.intersection(found)
    detector = CutDetector()
    assert np.concatenate([detector.push(vectors[i : i + 7]) for i in range(0, 90, 7)]).tolist() == cuts.tolist()
    history = CutParams().history
    for start in (5, 40, 61):
        lead = vectors[max(0, start - history) : start]
        assert CutDetector(lead_in=lead).push(vectors[start:]).tolist() == cuts[start:].tolist()


def test_a_render_killed_after_a_segment_resumes_identically_batch_by_batch() -> None:
    """As a render drives them: cuts and smooth choices batch by batch, resumed from the committed choices only."""
    clip = _DriftingClip(500, 40, k=8, seed=3)
    scorer = exact_scorer(clip.vectors)
    rules = ReuseRules(max_uses=2, min_gap=30)
    params, cut_params, batch = SmoothParams(0.25, window=96), CutParams(min_distance=0.1), 32
    cuts = scene_cuts(clip.queries, cut_params)

    def run(start: int, history: list[int]) -> list[Pick]:
        lead = clip.queries[max(0, start - cut_params.history) : start]
        detector = CutDetector(cut_params, lead_in=lead if start else None)
        selector = SmoothSelector(params, scorer, rules, history)
        picks: list[Pick] = []
        for first in range(start, 500, batch):
            rows = slice(first, min(500, first + batch))
            cuts = detector.push(clip.queries[rows])
            for t, cut in zip(range(rows.start, rows.stop), cuts.tolist(), strict=True):
                picks += selector.push(clip.queries[t], clip.scores[t], clip.ids[t], cut=cut)
        return picks + selector.finish()

    whole = run(0, [])
    ids = [p.image_id for p in whole]
    assert violations(rules, ids) == []
    # A kill leaves whole segments in the checkpoint: resume at each segment start seen.
    committed = sorted(
        {p.frame for p in whole if p.frame == 0 or p.frame % params.window == 0} | set(np.flatnonzero(cuts).tolist())
    )
    assert len(committed) > 10  # five cuts off the window's grid, and the grid
    for start in committed[1:]:
        assert run(start, ids[:start]) == whole[start:]
