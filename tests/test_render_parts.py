"""ff-render's parts on their own: selection rules, the checkpoint file, the output lock."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from fluxframe_render.checkpoint import Checkpoint, Header
from fluxframe_render.compose import JpegWriter, encode_jpeg
from fluxframe_render.lock import LOCK_NAME, OutputLock
from fluxframe_render.match import DECODE_OVERSAMPLE, Batch, Describe, auto_match_batch, decode_size
from fluxframe_render.pipeline import Runner, Source, Stage
from fluxframe_render.select import FIRST_BELOW_THRESHOLD, HELD, Choice, FrameRef, SelectionPolicy, Selector
from shared.errors import StateError, UsageError

Candidates = tuple[NDArray[np.float32], NDArray[np.int64]]


def _ranked(pairs: list[tuple[int, float]]) -> Candidates:
    return np.array([s for _, s in pairs], dtype=np.float32), np.array([i for i, _ in pairs], dtype=np.int64)


def _never() -> Candidates:
    raise AssertionError("no second search was expected")


def _choose(
    selector: Selector, index: int, pairs: list[tuple[int, float]], research: Callable[[], Candidates] = _never
) -> Choice:
    scores, ids = _ranked(pairs)
    return selector.choose(FrameRef(index, index, index / 10), scores, ids, lambda image_id: 0.5, research)


def test_no_repeat_takes_best_unused_and_researches_when_a_batch_used_them_all() -> None:
    selector = Selector(SelectionPolicy(True, 3, 0.0, 0), pool_size=10)
    assert _choose(selector, 0, [(4, 0.9), (5, 0.8)]).image_id == 4
    assert _choose(selector, 1, [(4, 0.9), (5, 0.8)]).image_id == 5
    # Both candidates are now used: the frame is searched again on its own.
    choice = _choose(selector, 2, [(4, 0.9), (5, 0.8)], research=lambda: _ranked([(7, 0.6), (-1, -np.inf)]))
    assert choice.image_id == 7 and choice.score == pytest.approx(0.6)
    with pytest.raises(StateError, match="ran out of images at output frame 3"):
        _choose(selector, 3, [(4, 0.9)], research=lambda: _ranked([(-1, -np.inf)]))


def test_random_pick_depends_only_on_seed_and_frame_index() -> None:
    pairs = [(i, 0.9 - i / 100) for i in range(10)]
    first = [_choose(Selector(SelectionPolicy(False, 10, 0.0, 5), 10), i, pairs).image_id for i in range(30)]
    # Frames chosen in another order (as after a resume) draw the same.
    later = Selector(SelectionPolicy(False, 10, 0.0, 5), 10)
    assert [_choose(later, i, pairs).image_id for i in range(15, 30)] == first[15:]
    assert len(set(first)) > 3
    other = [_choose(Selector(SelectionPolicy(False, 10, 0.0, 6), 10), i, pairs).image_id for i in range(30)]
    assert other != first


def test_random_pick_stays_within_depth_and_above_threshold() -> None:
    pairs = [(i, 0.9 - i / 10) for i in range(10)]  # 0.9, 0.8, ... 0.0
    picks = {_choose(Selector(SelectionPolicy(False, 4, 0.0, 1), 10), i, pairs).image_id for i in range(200)}
    assert picks == {0, 1, 2, 3}
    picks = {_choose(Selector(SelectionPolicy(False, 10, 0.65, 1), 10), i, pairs).image_id for i in range(200)}
    assert picks == {0, 1, 2}


def test_threshold_holds_the_previous_image() -> None:
    selector = Selector(SelectionPolicy(True, 5, 0.5, 0), pool_size=10)
    first = _choose(selector, 0, [(3, 0.2)])
    assert (first.image_id, first.threshold_applied, first.fallback) == (3, True, FIRST_BELOW_THRESHOLD)
    good = _choose(selector, 1, [(3, 0.9), (6, 0.7)])
    assert (good.image_id, good.threshold_applied, good.fallback) == (6, False, None)
    held = _choose(selector, 2, [(8, 0.3)])
    assert (held.image_id, held.score, held.threshold_applied, held.fallback) == (6, 0.5, True, HELD)
    assert selector.used is not None and 8 not in selector.used


@pytest.mark.parametrize(("depth", "threshold", "seed"), [(0, 0.0, 0), (1, 1.5, 0), (1, -0.1, 0), (1, 0.0, -1)])
def test_bad_policies(depth: int, threshold: float, seed: int) -> None:
    with pytest.raises(UsageError):
        SelectionPolicy(False, depth, threshold, seed)


def test_match_batch_is_large_enough_for_blas() -> None:
    assert auto_match_batch(376) == 384  # 384 * 376 >= 128,000
    assert auto_match_batch(4096) == 64
    assert auto_match_batch(16) == 1024


# -- checkpoint ------------------------------------------------------------------------------------


def _header(**options: object) -> Header:
    return Header("b" * 64, {"name": "clip.mp4", "bytes": 10}, {"seed": 1, "search_depth": 10, **options}, seed=1)


def _choices(start: int, stop: int) -> list[Choice]:
    return [Choice(i, i, i / 10, i % 7, 0.5 + i / 1000, False, None) for i in range(start, stop)]


def test_checkpoint_appends_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    checkpoint, progress = Checkpoint.open(path, _header())
    assert progress.choices == [] and not progress.complete
    checkpoint.save(_choices(0, 3))
    before = path.read_bytes()
    checkpoint.save(_choices(3, 5))
    # A save appends one line; earlier bytes are never rewritten.
    assert path.read_bytes().startswith(before) and len(path.read_text().splitlines()) == 3
    checkpoint.close()
    checkpoint, progress = Checkpoint.open(path, _header())
    assert progress.choices == _choices(0, 5)
    checkpoint.finish({"frames": 5, "fps": 10.0})
    checkpoint.close()
    _, progress = Checkpoint.open(path, _header())
    assert progress.complete and progress.end is not None and progress.end["frames"] == 5


def test_checkpoint_drops_a_line_cut_short_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    checkpoint, _ = Checkpoint.open(path, _header())
    checkpoint.save(_choices(0, 4))
    checkpoint.close()
    whole = path.read_bytes()
    torn = json.dumps({"type": "frames", "frames": [c.to_dict() for c in _choices(4, 6)]}).encode()[:-9]
    path.write_bytes(whole + torn)
    checkpoint, progress = Checkpoint.open(path, _header())
    assert progress.choices == _choices(0, 4)
    checkpoint.save(_choices(4, 6))
    checkpoint.close()
    assert Checkpoint.open(path, _header())[1].choices == _choices(0, 6)


def test_checkpoint_refuses_other_match_options_unless_restart(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    checkpoint, _ = Checkpoint.open(path, _header())
    checkpoint.save(_choices(0, 2))
    checkpoint.close()
    with pytest.raises(StateError, match=r"search_depth 10 -> 20.*--restart"):
        Checkpoint.open(path, _header(search_depth=20))
    checkpoint, progress = Checkpoint.open(path, _header(search_depth=20), restart=True)
    checkpoint.close()
    assert progress.choices == [] and progress.header.match_options["search_depth"] == 20


def test_checkpoint_damage_in_the_middle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    checkpoint, _ = Checkpoint.open(path, _header())
    checkpoint.save(_choices(0, 2))
    checkpoint.save(_choices(2, 4))
    checkpoint.close()
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:20]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(StateError, match="damaged at line 2"):
        Checkpoint.open(path, _header())


# -- lock --------------------------------------------------------------------------------------------


def test_lock_is_exclusive_and_removed_on_release(tmp_path: Path) -> None:
    with OutputLock(tmp_path):
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] > 0
        with pytest.raises(StateError, match=f"in use by ff-render pid {record['pid']}"):
            OutputLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with OutputLock(tmp_path):
        pass


def test_a_leftover_lock_file_without_a_holder_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 999_999_999, "host": "gone"}))
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] != 999_999_999


def test_checkpoint_tolerates_a_repeated_save_but_not_a_conflicting_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.jsonl"
    checkpoint, _ = Checkpoint.open(path, _header())
    checkpoint.save(_choices(0, 3))
    checkpoint.save(_choices(2, 4))  # frame 2 again, identical: a save interrupted after its write
    checkpoint.close()
    assert Checkpoint.open(path, _header())[1].choices == _choices(0, 4)
    conflicting = Choice(1, 1, 0.1, 6, 0.9, False, None)
    checkpoint, _ = Checkpoint.open(path, _header())
    checkpoint.save([conflicting])
    checkpoint.close()
    with pytest.raises(StateError, match="frame 1 where 4 was expected"):
        Checkpoint.open(path, _header())


def test_frames_are_decoded_at_the_comparison_size_of_their_crop() -> None:
    assert DECODE_OVERSAMPLE == 1
    assert decode_size((1280, 720), (256, 144)) == (256, 144)
    # A 4:3 bundle crops the 16:9 frame to 960x720, which shrinks to 256x192: the frame to 341x192.
    assert decode_size((1280, 720), (256, 192)) == (341, 192)
    assert decode_size((320, 180), (256, 144)) == (256, 144)
    assert decode_size((200, 112), (256, 144)) is None  # already smaller: decoded at full size
    # A portrait frame cropped to 16:9 keeps its whole width, which shrinks from 720 to 256.
    assert decode_size((720, 1280), (256, 144)) == (256, 455)


def test_a_held_picture_is_encoded_once_and_written_under_every_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    held = rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)
    same_pixels_other_array = held.copy()
    jpegs = JpegWriter()
    for index, image in enumerate((held, held, same_pixels_other_array, held)):
        jpegs.submit(tmp_path / f"frame_{index}.jpg", image)
    jpegs.finish()
    assert (jpegs.written, jpegs.encoded) == (4, 3)
    files = [(tmp_path / f"frame_{index}.jpg").read_bytes() for index in range(4)]
    assert len(set(files)) == 1 and files[0] == encode_jpeg(held)


class _Counting(Source[int]):
    name = "count"

    def __init__(self, n: int) -> None:
        self.n = n
        self.thread = ""

    def items(self) -> Iterator[int]:
        self.thread = threading.current_thread().name
        yield from range(self.n)


class _Doubling(Stage[int, int]):
    def __init__(self, name: str, threaded: bool) -> None:
        self.name = name
        self.threaded = threaded
        self.thread = ""

    def process(self, item: int) -> Iterable[int]:
        self.thread = threading.current_thread().name
        return (2 * item,)


class _Collect(Stage[int, int]):
    name = "collect"

    def __init__(self) -> None:
        self.items: list[int] = []

    def process(self, item: int) -> Iterable[int]:
        self.items.append(item)
        return ()


def test_a_threaded_first_stage_leaves_the_source_a_thread_of_its_own() -> None:
    """Decoding must overlap describing: the source and a threaded first stage run in two threads."""
    source, first, second, collect = _Counting(50), _Doubling("first", True), _Doubling("second", False), _Collect()
    timings = Runner(source, [first, second, collect]).run()
    assert collect.items == [4 * i for i in range(50)]
    assert source.thread != first.thread and first.thread == second.thread
    assert timings.stages["count"].items == 50 and timings.stages["first"].items == 50


def test_chunks_of_a_batch_are_described_together_and_batches_stay_aligned() -> None:
    """Describe joins a batch's chunks (the last flagged ends_batch); a stream ending mid-batch still comes out."""

    class Matcher:
        def queries(self, prepared: list[NDArray[np.uint8]]) -> NDArray[np.float32]:
            return np.asarray([[float(p[0, 0, 0])] for p in prepared], dtype=np.float32)

    describe = Describe(Matcher())  # type: ignore[arg-type]
    frames = [FrameRef(i, i, i / 10) for i in range(5)]
    images = [np.full((2, 2, 3), i, np.uint8) for i in range(5)]
    out = list(describe.process(Batch(frames[:2], images[:2], ends_batch=False)))
    out += list(describe.process(Batch(frames[2:3], images[2:3], ends_batch=True)))
    out += list(describe.process(Batch(frames[3:], images[3:], ends_batch=False)))
    out += list(describe.finish())
    assert [[f.index for f in b.frames] for b in out] == [[0, 1, 2], [3, 4]]
    assert [b.queries.ravel().tolist() for b in out if b.queries is not None] == [[0, 1, 2], [3, 4]]


def test_a_sample_takes_the_output_s_size_whatever_size_the_source_frame_was_decoded_at() -> None:
    from fluxframe_render.compose import side_by_side
    from fluxframe_render.output import source_size

    output = np.zeros((720, 1280, 3), dtype=np.uint8)
    size = source_size(1280, 720)
    assert size == (640, 360) and source_size(640, 360) is None
    # A stage that needs more (tile colour at a fine grid) widens it, up to the video's own size.
    assert source_size(1920, 1080, 1024) == (1024, 576) and source_size(1280, 720, 1600) is None
    small_source = np.full((360, 640, 3), 200, dtype=np.uint8)
    sample = side_by_side(small_source, output, "frame", "match")
    assert sample.shape == (360, 1280, 3)
    assert side_by_side(np.full((200, 300, 3), 9, np.uint8), np.zeros((300, 480, 3), np.uint8), "a", "b").shape == (
        300,
        960,
        3,
    )
