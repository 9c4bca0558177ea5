"""A few frames of a video, spread evenly over the clip, read with PyAV (seeking, not decoding it all).

ff-index must not import ff-render, so this is the small reader the method comparison needs:
frame ``i`` of ``count`` is the decoded frame nearest to ``duration * (i + 0.5) / count``,
upright (the container's rotation applied as ff-render applies it) and in BGR, ready for
``shared.images.prepare_image``. Each target is reached by a seek to the keyframe before it,
so a long clip costs a few GOPs of decoding, not the whole file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.container import InputContainer
from av.video.stream import VideoStream
from numpy.typing import NDArray

from shared.errors import InputError

# Demuxers that open a still image or a text file as a one-frame "video": never a clip to compare on.
_STILL_FORMATS = frozenset({"image2", "image2pipe", "tty", "ansi"})


@dataclass(frozen=True)
class ClipFrame:
    """One picked frame."""

    position: int  # 0.. in clip order
    time: float  # seconds from the clip's first frame
    image: NDArray[np.uint8]  # H x W x 3 BGR, upright


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _open(path: Path) -> tuple[InputContainer, VideoStream]:
    if not path.is_file():
        raise InputError(f"video not found: {path}" if not path.exists() else f"not a file: {path}")
    try:
        container = av.open(str(path), "r")
    except (av.FFmpegError, OSError) as exc:
        raise InputError(f"not a video, or a damaged one: {path} ({_one_line(exc)})") from None
    name = container.format.name
    # Cover art in an audio file is a video stream flagged attached_pic: not a video either.
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if name in _STILL_FORMATS or name.endswith("_pipe") or not streams:
        container.close()
        raise InputError(f"not a video: {path} (no video stream; format {name})")
    return container, streams[0]


def _upright(frame: av.VideoFrame) -> NDArray[np.uint8]:
    image = np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)
    # FFmpeg's display-matrix angle is counter-clockwise; players (and ff-render) turn the picture back.
    quarter_turns_clockwise = (-round(frame.rotation / 90)) % 4
    return np.ascontiguousarray(np.rot90(image, k=-quarter_turns_clockwise)) if quarter_turns_clockwise else image


def _duration(container: InputContainer, stream: VideoStream, start: float) -> float:
    """Seconds from the first frame to the last packet (a demux pass, no decoding, when the header is silent)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(container.duration / av.time_base)
    last = start
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base is not None:
            last = max(last, float(packet.pts * packet.time_base))
    return last - start


def spread_frames(path: Path, count: int) -> Iterator[ClipFrame]:
    """``count`` frames spread over the clip at ``path`` (fewer when the clip has fewer distinct frames).

    Raises InputError for a missing file, something that is not a video, or one that does not decode.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    container, stream = _open(path)
    with container:
        stream.thread_type = "AUTO"
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise InputError(f"cannot decode {path}: {_one_line(exc)}") from None
        if first is None or stream.time_base is None:
            raise InputError(f"no decodable video frame in {path}")
        start = float(first.time or 0.0)
        duration = _duration(container, stream, start)
        seen: set[float] = set()
        for position in range(count):
            target = duration * (position + 0.5) / count
            frame = first if duration <= 0 else _frame_near(container, stream, path, start, target)
            time = max(0.0, float(frame.time or start) - start)
            if time in seen:
                continue  # a clip shorter than the count: the same frame again adds nothing
            seen.add(time)
            yield ClipFrame(len(seen) - 1, time, _upright(frame))


def _frame_near(
    container: InputContainer, stream: VideoStream, path: Path, start: float, target: float
) -> av.VideoFrame:
    """The decoded frame nearest to ``target`` seconds after the first frame."""
    assert stream.time_base is not None
    try:
        container.seek(int((start + target) / stream.time_base), stream=stream, backward=True)
        before: av.VideoFrame | None = None
        for frame in container.decode(stream):
            time = float(frame.time or 0.0) - start
            if time >= target:
                if before is not None and target - (float(before.time or 0.0) - start) < time - target:
                    return before
                return frame
            before = frame
    except av.FFmpegError as exc:
        raise InputError(f"cannot decode {path} near {target:.1f} s: {_one_line(exc)}") from None
    if before is None:
        raise InputError(f"no decodable video frame in {path} after {target:.1f} s")
    return before  # the target lies after the last frame (a header that overstates the length)
