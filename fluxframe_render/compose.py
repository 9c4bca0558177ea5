"""Output pictures: matched images at the video's size, comparison samples, JPEG files.

A matched image is decoded at the smallest JPEG DCT scale that still covers the
output size, centre-cropped to the video's aspect and resized with INTER_AREA
(``load_prepared``, the same chain ff-index used). Images are loaded a few frames
ahead in worker threads (decoding and resizing release the GIL) and the most
recent ones are kept, so a held or repeated image is decoded once.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, cast

import cv2
import numpy as np

from shared.bundle import Bundle
from shared.errors import FluxFrameError, OutputError
from shared.features.base import Image
from shared.images import BACKGROUND_GREY, load_prepared

JPEG_QUALITY = 90
CACHE_BYTES = 256 << 20  # decoded output-size images kept for reuse
LOOKAHEAD = 8  # images loaded ahead of the encoder
SAMPLE_HALF_WIDTH = 640  # each half of a comparison sample is at most this wide
# The output phase decodes source frames at most this wide: its stages need no more of them
# (colour statistics at 320 px, look thumbnails at 64, samples at SAMPLE_HALF_WIDTH, report at 240).
SOURCE_WIDTH = SAMPLE_HALF_WIDTH


class IdStream(Protocol):
    """Image ids by position: ``get`` waits for the id (None past the end), ``ready`` never waits."""

    def get(self, position: int) -> int | None: ...

    def ready(self, position: int) -> int | None: ...


class MatchedImages:
    """Pool images by id, at the output size; unreadable ones become grey and are reported.

    An image shown on several frames is handed out as the same array each time (later stages
    recognise a held image by identity): never modify one in place.
    """

    def __init__(
        self,
        bundle: Bundle,
        pool_root: Path,
        size: tuple[int, int],
        *,
        workers: int = 2,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.bundle = bundle
        self.pool_root = pool_root
        self.size = size
        self.missing: dict[int, str] = {}
        self._cache: OrderedDict[int, Image] = OrderedDict()
        self._capacity = max(2, cache_bytes // (size[0] * size[1] * 3))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ff-render-load")

    def _path(self, image_id: int) -> Path | None:
        # Resolved in the calling thread: the bundle's row-group cache is not shared across threads.
        try:
            return self.bundle.image_paths([image_id], self.pool_root)[0]
        except FluxFrameError as exc:
            self.missing[image_id] = str(exc)
            return None

    def _load(self, image_id: int, path: Path | None) -> Image:
        if path is not None:
            try:
                image, _ = load_prepared(path, self.size)
                return image
            except FluxFrameError as exc:
                self.missing[image_id] = str(exc)
        return np.full((self.size[1], self.size[0], 3), BACKGROUND_GREY, dtype=np.uint8)

    def _remember(self, image_id: int, image: Image) -> None:
        self._cache[image_id] = image
        self._cache.move_to_end(image_id)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

    def iter_images(self, ids: IdStream) -> Iterator[Image]:
        """The image of every id in order, loading up to LOOKAHEAD distinct images ahead.

        Read-ahead looks only at ids already there (``ready``): ids still being matched are
        waited for one at a time, when they are due.
        """
        pending: dict[int, Future[Image]] = {}
        next_to_schedule = 0
        position = 0
        while (image_id := ids.get(position)) is not None:
            next_to_schedule = max(next_to_schedule, position)
            while next_to_schedule < position + LOOKAHEAD:
                upcoming = ids.ready(next_to_schedule)
                if upcoming is None:
                    break
                if upcoming not in self._cache and upcoming not in pending:
                    pending[upcoming] = self._pool.submit(self._load, upcoming, self._path(upcoming))
                next_to_schedule += 1
            if image_id in pending:
                image = pending.pop(image_id).result()
                self._remember(image_id, image)
            elif image_id in self._cache:
                image = self._cache[image_id]
                self._cache.move_to_end(image_id)
            else:
                # Evicted between scheduling and use (a very small cache): load it now.
                image = self._load(image_id, self._path(image_id))
                self._remember(image_id, image)
            yield image
            position += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _label(image: Image, text: str) -> None:
    """White text on a dark box in the top-left corner (readable on any picture)."""
    scale = max(0.4, image.shape[1] / 900)
    thickness = max(1, round(scale * 1.5))
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(3, round(4 * scale))
    cv2.rectangle(image, (0, 0), (width + 2 * pad, height + baseline + 2 * pad), (0, 0, 0), thickness=-1)
    origin = (pad, pad + height)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def side_by_side(frame: Image, matched: Image, left: str, right: str) -> Image:
    """Source frame and its matched image next to each other, each labelled, each at most 640 px wide."""
    # The output's size sets the sample's (the source frame may come decoded smaller).
    h, w = matched.shape[:2]
    size = (w, h) if w <= SAMPLE_HALF_WIDTH else (SAMPLE_HALF_WIDTH, max(2, round(h * SAMPLE_HALF_WIDTH / w)))
    frame, matched = (
        cast(Image, cv2.resize(image, size, interpolation=cv2.INTER_AREA))
        if image.shape[1::-1] != size
        else image.copy()
        for image in (frame, matched)
    )
    _label(frame, left)
    _label(matched, right)
    return np.ascontiguousarray(np.hstack([frame, matched]))


def encode_jpeg(image: Image, quality: int = JPEG_QUALITY) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OutputError("OpenCV could not encode a JPEG")
    return bytes(buffer.tobytes())


def write_replacing(path: Path, data: bytes) -> None:
    """Write under a temporary name, then rename: a killed run never leaves a half-written picture.

    No fsync: no later run trusts these pictures (a rerun writes them all again), and
    two fsyncs per frame would cost more than the encoding.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


class JpegWriter:
    """Encodes and writes JPEGs in worker threads, a bounded number in flight.

    A picture submitted again right after itself (the same array: a held image, which
    MatchedImages hands out once per distinct image) is encoded once and its bytes written
    under each name: 0.8 of the bench clip's frames hold the image before them.
    """

    def __init__(self, workers: int = 2, in_flight: int = 16) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ff-render-jpeg")
        self._futures: deque[Future[None]] = deque()
        self._in_flight = in_flight
        self._last: tuple[Image, Future[bytes]] | None = None  # the last picture encoded, and its bytes
        self.written = 0
        self.encoded = 0

    @staticmethod
    def _write(path: Path, encoded: Future[bytes]) -> None:
        # The encoding was submitted before this job, so a worker has already taken it: no deadlock.
        write_replacing(path, encoded.result())

    def submit(self, path: Path, image: Image) -> None:
        while len(self._futures) >= self._in_flight:
            self._futures.popleft().result()
        if self._last is None or self._last[0] is not image:
            self._last = (image, self._pool.submit(encode_jpeg, image))
            self.encoded += 1
        self._futures.append(self._pool.submit(self._write, path, self._last[1]))
        self.written += 1

    def finish(self) -> None:
        """Wait for every write; raises the first write error."""
        try:
            while self._futures:
                self._futures.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
