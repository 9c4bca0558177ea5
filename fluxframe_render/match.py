"""Video frames -> prepared images -> weighted query vectors -> ranked candidates, in batches.

Frames are prepared by the same ``prepare_image`` and described by the same
extractor that ff-index used for the pool, so a frame and a pool picture of the
same content get the same vector. Only prepared frames (comparison size) are held
in memory, never full frames, and decoding runs in a background thread while the
previous batch is described and searched.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.select import FrameRef
from fluxframe_render.video import FrameReader
from shared.features.base import Extractor, Image, Vectors, weight_query
from shared.images import prepare_image
from shared.search import Searcher, UsedSet, exact_scores

# One read of the vectors serves a whole batch of frames: exact search at 1M x 376 costs
# 4.8 ms/frame in batches of 128, 4.1 in 384 and 3.9 in 1024 (measured), so a batch holds
# about this much work (frames x dim) and few frames wait in memory. It is also FAISS's
# own BLAS threshold, which shared.search lowers for partial batches.
MATCH_WORK = 128_000
MIN_BATCH = 64
MAX_BATCH = 1024


def auto_match_batch(dim: int) -> int:
    """Frames per search call for vectors of ``dim``: about MATCH_WORK / dim, a multiple of 64."""
    wanted = math.ceil(MATCH_WORK / max(1, dim))
    return max(MIN_BATCH, min(MAX_BATCH, math.ceil(wanted / 64) * 64))


@dataclass
class Batch:
    frames: list[FrameRef]
    prepared: list[Image]


@dataclass
class MatchTimings:
    """Seconds spent per stage; ``decode`` is time the matcher waited for frames."""

    decode: float = 0.0
    extract: float = 0.0
    search: float = 0.0
    select: float = 0.0
    frames: int = 0

    def per_frame_ms(self) -> dict[str, float]:
        n = max(1, self.frames)
        total = self.decode + self.extract + self.search + self.select
        return {
            "decode_wait": 1000 * self.decode / n,
            "extract": 1000 * self.extract / n,
            "search": 1000 * self.search / n,
            "select": 1000 * self.select / n,
            "total": 1000 * total / n,
        }


_DONE = object()


def prepared_batches(
    reader: FrameReader, size: tuple[int, int], batch: int, *, first: int = 0
) -> Generator[Batch, None, None]:
    """Batches of prepared frames aligned to multiples of ``batch`` counted from output frame 0.

    ``first`` must be such a multiple (the reader starts there). Decoding and preparing
    run in a daemon thread two batches ahead; its errors are raised here.
    """
    if first % batch:
        raise ValueError(f"first frame {first} is not a multiple of the batch size {batch}")
    channel: queue.Queue[object] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        try:
            frames: list[FrameRef] = []
            images: list[Image] = []
            for frame in reader:
                frames.append(FrameRef(frame.index, frame.source_index, frame.time))
                images.append(prepare_image(frame.image, size))
                if len(frames) == batch:
                    channel.put(Batch(frames, images))
                    frames, images = [], []
                if stop.is_set():
                    return
            if frames:
                channel.put(Batch(frames, images))
            channel.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it in its own thread
            channel.put(exc)

    worker = threading.Thread(target=produce, name="ff-render-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = channel.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, Batch)
            yield item
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue so the thread can see ``stop`` and end.
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                channel.get(timeout=0.05)


class FrameMatcher:
    """Describes prepared frames and ranks pool images for them."""

    def __init__(
        self,
        extractor: Extractor,
        searcher: Searcher,
        weights: dict[str, float],
        k: int,
        *,
        enough: int | None = None,
    ) -> None:
        self.extractor = extractor
        self.searcher = searcher
        self.weights = weights
        self.k = k
        # Unused candidates a row needs before an IVF probe stops looking wider (None: k).
        self.enough = enough
        self.timings = MatchTimings()

    def queries(self, prepared: Sequence[Image]) -> Vectors:
        start = time.perf_counter()
        vectors = weight_query(self.extractor.extract(prepared), self.extractor.blocks, self.weights)
        self.timings.extract += time.perf_counter() - start
        return vectors

    def candidates(
        self, queries: Vectors, used: UsedSet | None, k: int | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top ``k`` (default: the matcher's) pool images per query, ``used`` excluded."""
        start = time.perf_counter()
        scores, ids = self.searcher.search(queries, k or self.k, used, enough=self.enough)
        self.timings.search += time.perf_counter() - start
        return scores, ids

    def score_of(self, query: NDArray[np.float32], image_id: int) -> float:
        """The weighted similarity of one pool image to one frame (the arithmetic of the search's scores)."""
        ids = np.array([[image_id]], dtype=np.int64)
        return float(exact_scores(self.searcher.vectors, query.reshape(1, -1), ids)[0, 0])
