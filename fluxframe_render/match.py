"""Video frames -> prepared images -> weighted query vectors -> ranked candidates, in batches.

Frames are prepared by the same ``prepare_image`` and described by the same
extractor that ff-index used for the pool, so a frame and a pool picture of the
same content get the same vector. Only prepared frames (comparison size) are held
in memory, never full frames. The stages here (source, describe, search) are run by
pipeline.Runner, which decodes in its own thread while earlier batches are described
and searched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from fluxframe_render.pipeline import Source, Stage
from fluxframe_render.scenes import CutDetector, CutParams
from fluxframe_render.select import FrameRef
from fluxframe_render.video import FrameReader
from shared.features.base import Extractor, Image, Vectors, weight_query
from shared.images import center_crop_box, prepare_image
from shared.search import Searcher, UsedSet, exact_scores

# One read of the vectors serves a whole batch of frames: exact search at 1M x 376 costs
# 4.8 ms/frame in batches of 128, 4.1 in 384 and 3.9 in 1024 (measured), so a batch holds
# about this much work (frames x dim) and few frames wait in memory. It is also FAISS's
# own BLAS threshold, which shared.search lowers for partial batches.
MATCH_WORK = 128_000
MIN_BATCH = 64
MAX_BATCH = 1024
# Frames are decoded straight to this many times the comparison size (one swscale pass
# converting and scaling), then cropped and INTER_AREA-resized by prepare_image as pool
# images are. Against the full-size chain at 720p, x1 differs by 0.93 grey levels on average
# (p99 7) and x2 by 0.82 (p99 3), but retrieval does not see it: copy recall@1 of 240 degraded
# 720p copies is 0.942 at x1, 0.938 at x2 and 0.917 decoded at full size (query cosine to the
# full-size chain 0.9946 vs 0.9934), and make quality's full-frame rows moved within their
# run-to-run noise. x1 makes the match phase ~10 % cheaper: 505 against 455 fps alternately,
# 3.6 against 4.0 ms of CPU a frame (measured).
DECODE_OVERSAMPLE = 1
# Matching decodes without the in-loop deblocking filter: its frames are scaled down to the
# comparison size, whose area filter averages the block edges it smooths away anyway.
# H.264 decoding then costs 15-17 % less CPU (the phase's largest part); copy recall is
# measured by the render bench's recall row, decoded this way.
DEBLOCK_FOR_MATCHING = False
# How the match phase turns video frames into what it compares (decoding, scaling, describing,
# tile cells included). A checkpoint made by another version is matched again instead of
# resumed: its choices came from other pictures, and a resumed render must equal a fresh one.
# 2: decoded at the comparison size without deblocking; tile cells described at 2 px a block.
FRAME_INPUT_VERSION = 2


def decode_size(video: tuple[int, int], prepared: tuple[int, int]) -> tuple[int, int] | None:
    """(w, h) to decode a ``video``-sized frame at so that its centre crop to ``prepared``'s aspect is
    DECODE_OVERSAMPLE times ``prepared``; None when that is no smaller than the video."""
    width, height = video
    _, _, crop_w, _ = center_crop_box(width, height, prepared[0] / prepared[1])
    scale = DECODE_OVERSAMPLE * prepared[0] / crop_w
    if scale >= 1:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def auto_match_batch(dim: int) -> int:
    """Frames per search call for vectors of ``dim``: about MATCH_WORK / dim, a multiple of 64."""
    wanted = math.ceil(MATCH_WORK / max(1, dim))
    return max(MIN_BATCH, min(MAX_BATCH, math.ceil(wanted / 64) * 64))


# Frames handed from the decoding thread to the describing one at a time: small enough that
# the frames in flight (this many x (QUEUE_DEPTH + 2)) stay below one search batch of them.
DESCRIBE_CHUNK = 32


@dataclass
class Batch:
    """A run of consecutive output frames on their way through the match stages."""

    frames: list[FrameRef]
    prepared: list[Image]
    queries: Vectors | None = None  # weighted query vectors, once described
    scores: NDArray[np.float32] | None = None  # top-k candidates, once searched
    ids: NDArray[np.int64] | None = None
    cuts: NDArray[np.bool_] | None = None  # a scene starts at the frame (scenes.py)
    ends_batch: bool = True  # False: a chunk of a search batch that later chunks complete (Describe joins them)


class VideoFrames(Source[Batch]):
    """The source of the match phase: decoded frames prepared at the comparison size, in aligned batches.

    Batches are aligned to multiples of ``batch`` counted from output frame 0, so a
    resumed run searches exactly the batches an uninterrupted run searched; ``first``
    must be such a multiple (the reader starts there). Each batch comes in chunks of up to
    DESCRIBE_CHUNK frames, the last one flagged ``ends_batch``, so that describing overlaps
    decoding without a whole batch of frames waiting in between.
    """

    name = "decode"

    def __init__(self, reader: FrameReader, size: tuple[int, int], batch: int, *, first: int = 0) -> None:
        if first % batch:
            raise ValueError(f"first frame {first} is not a multiple of the batch size {batch}")
        self.reader = reader
        self.size = size
        self.batch = batch

    def items(self) -> Iterator[Batch]:
        frames: list[FrameRef] = []
        images: list[Image] = []
        info = self.reader.info
        size = decode_size((info.width, info.height), self.size)
        for frame in self.reader.iter(size, deblock=DEBLOCK_FOR_MATCHING):
            frames.append(FrameRef(frame.index, frame.source_index, frame.time))
            images.append(prepare_image(frame.image, self.size))
            ends_batch = (frame.index + 1) % self.batch == 0
            if ends_batch or len(frames) == DESCRIBE_CHUNK:
                yield Batch(frames, images, ends_batch=ends_batch)
                frames, images = [], []
        if frames:
            yield Batch(frames, images)


class Describe(Stage[Batch, Batch]):
    """Prepared frames -> weighted query vectors (the extractor ff-index used for the pool).

    Describes each chunk as it comes and hands on whole search batches: the chunks of one
    batch joined, prepared frames dropped (only the vectors go on).
    """

    name = "describe"
    threaded = True  # decoding runs ahead in the source's thread

    def __init__(self, matcher: FrameMatcher) -> None:
        self.matcher = matcher
        self._frames: list[FrameRef] = []
        self._queries: list[Vectors] = []

    def process(self, item: Batch) -> Iterable[Batch]:
        self._frames.extend(item.frames)
        self._queries.append(self.matcher.queries(item.prepared))
        return (self._joined(),) if item.ends_batch else ()

    def finish(self) -> Iterable[Batch]:
        # The video ended on a chunk boundary inside a batch: the rest is the last batch.
        return (self._joined(),) if self._frames else ()

    def _joined(self) -> Batch:
        batch = Batch(self._frames, [], queries=np.concatenate(self._queries))
        self._frames, self._queries = [], []
        return batch


class Scenes(Stage[Batch, Batch]):
    """Scene cuts from the frames' own query vectors (scenes.CutDetector, fed every frame in order).

    A cut at frame t depends only on the ``history`` frames before it, so a resumed run that
    re-reads at least that many frames before its first new one finds the same cuts.
    """

    name = "scenes"

    def __init__(self, params: CutParams) -> None:
        self.detector = CutDetector(params)

    def process(self, item: Batch) -> Iterable[Batch]:
        assert item.queries is not None
        item.cuts = self.detector.push(item.queries)
        return (item,)


class Search(Stage[Batch, Batch]):
    """Query vectors -> each frame's top-k candidates, the images the selection blocks left out.

    ``excluded(batch)`` gives the ids to leave out for that batch: what the selection had
    blocked when the batch began, as an uninterrupted run would have had it.
    """

    name = "search"

    def __init__(self, matcher: FrameMatcher, excluded: Callable[[Batch], UsedSet | None]) -> None:
        self.matcher = matcher
        self.excluded = excluded

    def process(self, item: Batch) -> Iterable[Batch]:
        assert item.queries is not None
        item.scores, item.ids = self.matcher.candidates(item.queries, self.excluded(item))
        return (item,)


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

    def queries(self, prepared: Sequence[Image]) -> Vectors:
        return weight_query(self.extractor.extract(prepared), self.extractor.blocks, self.weights)

    def candidates(
        self, queries: Vectors, used: UsedSet | None, k: int | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Top ``k`` (default: the matcher's) pool images per query, ``used`` excluded."""
        return self.searcher.search(queries, k or self.k, used, enough=self.enough)

    def score_of(self, query: NDArray[np.float32], image_id: int) -> float:
        """The weighted similarity of one pool image to one frame (the arithmetic of the search's scores)."""
        ids = np.array([[image_id]], dtype=np.int64)
        return float(exact_scores(self.searcher.vectors, query.reshape(1, -1), ids)[0, 0])
