"""Video reading and writing on real videos encoded in the test (skimage pictures, sine-sweep audio)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from fluxframe_render.video import (
    FrameReader,
    SourceFrame,
    VideoWriter,
    even_size,
    output_schedule,
    probe_video,
)
from shared.errors import InputError, OutputError, UsageError
from tests.media import (
    describe_video,
    make_audio_file,
    make_test_video,
    real_clip,
    rotate_mp4_display,
    skimage_images,
    sweep,
)

FPS = 10.0
SECONDS = 3.0  # three pictures, one second each


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    return make_test_video(folder / "clip.mp4", skimage_images()[:3], fps=FPS)


@pytest.fixture(scope="module")
def clip_frames(clip: Path) -> list[SourceFrame]:
    return list(FrameReader(clip))


def _mad(a: NDArray[np.generic], b: NDArray[np.generic]) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _best_correlation(expected: NDArray[np.float32], got: NDArray[np.float32]) -> float:
    """Correlation of the steady middle of two signals, over shifts of up to 400 samples (codec delays)."""
    lead = 3000
    middle = expected[lead:-lead]
    scores = []
    for shift in range(-400, 401, 8):
        window = got[lead + shift : lead + shift + middle.size]
        if window.size == middle.size:
            scores.append(float(np.corrcoef(middle, window)[0, 1]))
    return max(scores)


def _write_all(out: Path, source: Path, **kwargs: float) -> VideoWriter:
    reader = FrameReader(source, fps_override=kwargs.get("fps"), max_seconds=kwargs.get("max_seconds"))
    info = reader.info
    with VideoWriter(
        out, info.width, info.height, reader.fps, audio_from=source, audio_max_seconds=kwargs.get("max_seconds")
    ) as writer:
        for frame in reader:
            writer.write(frame.image)
    return writer


def test_probe_describes_a_made_video(clip: Path) -> None:
    info = probe_video(clip)
    assert (info.width, info.height) == (320, 180)
    assert info.fps == FPS
    assert info.frame_count == 30
    assert info.duration == pytest.approx(SECONDS)
    assert info.has_audio and info.audio_codec == "aac"
    assert info.rotation == 0


def test_frames_cover_the_whole_video_in_order(clip_frames: list[SourceFrame]) -> None:
    assert len(clip_frames) == round(FPS * SECONDS)
    assert [f.index for f in clip_frames] == list(range(30))
    assert [f.source_index for f in clip_frames] == list(range(30))
    assert [f.time for f in clip_frames] == pytest.approx([k / FPS for k in range(30)])
    first = clip_frames[0].image
    assert first.shape == (180, 320, 3) and first.dtype == np.uint8 and first.flags.c_contiguous
    # The pan/zoom moves within a picture; a new picture changes everything.
    assert 1.0 < _mad(clip_frames[0].image, clip_frames[1].image) < 25.0
    assert _mad(clip_frames[9].image, clip_frames[10].image) > 25.0
    # BGR order: the first picture (astronaut) decodes close to the picture it was made from.
    astronaut = cv2.resize(skimage_images()[0], (180, 180), interpolation=cv2.INTER_AREA)
    centre = first[:, 70:250]
    assert _mad(centre, astronaut) < _mad(centre, astronaut[:, :, ::-1])


def test_fps_override_halves_the_frames_and_keeps_the_duration(clip: Path, clip_frames: list[SourceFrame]) -> None:
    info = probe_video(clip)
    assert output_schedule(info, 5.0, None) == (5.0, 15)
    halved = list(FrameReader(clip, fps_override=5.0))
    assert len(halved) == 15
    assert len(halved) / 5.0 == pytest.approx(SECONDS)
    assert [f.source_index for f in halved] == list(range(0, 30, 2))
    for frame in halved:
        assert np.array_equal(frame.image, clip_frames[frame.source_index].image)
    # A rate that does not divide the source one samples by time, nearest frame.
    assert [f.source_index for f in FrameReader(clip, fps_override=3.0)] == [round(k * 10 / 3) for k in range(9)]


def test_fps_override_above_the_source_rate_is_clamped_and_nonpositive_is_refused(clip: Path) -> None:
    info = probe_video(clip)
    assert output_schedule(info, 60.0, None) == (FPS, 30)
    assert output_schedule(info, None, 1.0) == (FPS, 10)
    assert output_schedule(info, 4.0, 1.1) == (4.0, 5)  # frames starting before 1.1 s: 0, .25, .5, .75, 1.0
    for bad in (0.0, -5.0):
        with pytest.raises(UsageError):
            output_schedule(info, bad, None)
    with pytest.raises(UsageError):
        output_schedule(info, None, 0.0)


def test_start_index_resumes_at_the_right_frame(clip: Path, clip_frames: list[SourceFrame]) -> None:
    resumed = list(FrameReader(clip, start_index=12))
    assert [f.index for f in resumed] == list(range(12, 30))
    for frame in resumed:
        assert np.array_equal(frame.image, clip_frames[frame.index].image)
    halved = list(FrameReader(clip, fps_override=5.0, start_index=4))
    assert [(f.index, f.source_index) for f in halved][:2] == [(4, 8), (5, 10)]
    assert list(FrameReader(clip, start_index=30)) == []


def test_max_seconds_stops_early_without_calling_it_truncated(clip: Path) -> None:
    reader = FrameReader(clip, max_seconds=1.0)
    frames = list(reader)
    assert len(frames) == 10 and reader.expected == 10
    assert reader.decoded < 30  # decoding stopped soon after the limit
    assert not reader.truncated


def test_writer_makes_h264_with_the_source_audio(clip: Path, clip_frames: list[SourceFrame], tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    writer = _write_all(out, clip)
    assert writer.audio_mode == "copy" and writer.audio_errors == []
    facts = describe_video(out, with_audio_samples=True)
    assert (facts.container.split(",")[0], facts.video_codec, facts.pix_fmt) == ("mov", "h264", "yuv420p")
    assert (facts.width, facts.height, facts.fps) == (320, 180, FPS)
    assert facts.frames == 30
    assert facts.video_seconds == pytest.approx(SECONDS, abs=1 / FPS)
    assert facts.audio_codec == "aac"
    assert facts.audio_seconds == pytest.approx(facts.video_seconds, abs=1 / FPS)
    # The copied audio is the source sweep, in sync (AAC priming trimmed by the edit list).
    assert facts.audio_samples is not None
    expected = sweep(SECONDS).mean(axis=0)
    n = min(expected.size, facts.audio_samples.size) - 2000
    assert np.corrcoef(expected[1000:n], facts.audio_samples[1000:n])[0, 1] > 0.99
    # The pictures survive the round trip (CRF 20, colour tags honoured).
    back = list(FrameReader(out))
    assert max(_mad(a.image, b.image) for a, b in zip(back, clip_frames, strict=True)) < 6.0
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_writer_at_an_override_rate_and_time_limit_keeps_audio_in_step(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo.mp4"
    _write_all(out, clip, fps=5.0, max_seconds=2.0)
    facts = describe_video(out)
    assert (facts.fps, facts.frames) == (5.0, 10)
    assert facts.video_seconds == pytest.approx(2.0, abs=0.2)
    assert facts.audio_seconds == pytest.approx(facts.video_seconds, abs=0.2)


@pytest.mark.parametrize(
    ("name", "audio_codec", "mode", "out_codec"),
    [
        ("pcm.mkv", "pcm_s16le", "aac", "aac"),
        ("pcm.mov", "pcm_s16le", "aac", "aac"),
        ("opus.mkv", "libopus", "aac", "aac"),
        ("mp3.mkv", "libmp3lame", "copy", "mp3"),
    ],
)
def test_audio_is_copied_or_reencoded_to_fit_mp4(
    tmp_path: Path, name: str, audio_codec: str, mode: str, out_codec: str
) -> None:
    source = make_test_video(tmp_path / name, skimage_images()[3:5], fps=FPS, audio_codec=audio_codec)
    out = tmp_path / "out.mp4"
    writer = _write_all(out, source)
    assert writer.audio_mode == mode and writer.audio_errors == []
    facts = describe_video(out, with_audio_samples=True)
    assert facts.frames == 20
    assert facts.audio_codec == out_codec
    assert facts.audio_seconds == pytest.approx(2.0, abs=1 / FPS)
    assert facts.audio_samples is not None
    assert _best_correlation(sweep(2.0).mean(axis=0), facts.audio_samples) > 0.95


def test_failed_write_removes_the_partial_file_and_keeps_the_earlier_output(
    clip_frames: list[SourceFrame], tmp_path: Path
) -> None:
    out = tmp_path / "result.mp4"
    with VideoWriter(out, 320, 180, FPS) as writer:
        for frame in clip_frames[:5]:
            writer.write(frame.image)
    before = out.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(out, 320, 180, FPS) as writer:
        for frame in clip_frames:
            writer.write(frame.image)
        assert writer.temp_path.exists()
        raise RuntimeError("boom")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.mp4"]


def test_writer_crops_odd_sizes_and_checks_its_arguments(clip_frames: list[SourceFrame], tmp_path: Path) -> None:
    assert even_size(321, 181) == (320, 180) and even_size(320, 180) == (320, 180)
    out = tmp_path / "odd.mp4"
    with VideoWriter(out, 319, 179, FPS) as writer:
        for frame in clip_frames[:3]:
            writer.write(np.ascontiguousarray(frame.image[:179, :319]))
        with pytest.raises(ValueError, match="expected a 179x319x3"):
            writer.write(frame.image)
    facts = describe_video(out)
    assert (facts.width, facts.height, facts.frames, facts.audio_codec) == (318, 178, 3, None)
    with pytest.raises(UsageError):
        VideoWriter(tmp_path / "x.mp4", 320, 180, FPS, crf=60)
    with pytest.raises(UsageError):
        VideoWriter(tmp_path / "x.mp4", 320, 180, FPS, preset="warp")
    with pytest.raises(OutputError):
        VideoWriter(tmp_path / "missing-folder" / "x.mp4", 320, 180, FPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.mp4"]


def test_a_truncated_video_yields_what_decodes_and_says_so(clip: Path, tmp_path: Path) -> None:
    data = clip.read_bytes()
    half = tmp_path / "half.mp4"
    half.write_bytes(data[: len(data) // 2])
    reader = FrameReader(half)
    frames = list(reader)
    assert 3 <= len(frames) < 30
    assert reader.produced == len(frames) and reader.expected == 30
    assert reader.truncated
    complete = FrameReader(clip)
    assert len(list(complete)) == 30 and not complete.truncated
    # Cut right after the header (index up front, no picture data): nothing decodes.
    header_only = tmp_path / "header.mp4"
    header_only.write_bytes(data[: data.index(b"mdat") + 4])
    with pytest.raises(InputError, match="no decodable video frame"):
        list(FrameReader(header_only))


def test_files_that_are_not_videos_raise_one_line_input_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 20)
    ok, jpeg = cv2.imencode(".jpg", skimage_images()[1])
    assert ok
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg.tobytes())
    disguised = tmp_path / "photo.mp4"
    disguised.write_bytes(jpeg.tobytes())
    garbage = tmp_path / "noise.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    song = make_audio_file(tmp_path / "song.m4a", 1.0)
    cases = {
        tmp_path / "missing.mp4": "video not found",
        text: "not a video",
        photo: "not a video",
        disguised: "not a video",
        garbage: "not a video",
        song: "no video stream",
        tmp_path: "not a file",
    }
    for path, message in cases.items():
        with pytest.raises(InputError) as caught:
            probe_video(path)
        assert message in str(caught.value)
        assert "\n" not in str(caught.value)
        with pytest.raises(InputError):
            list(FrameReader(path))


@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_a_rotated_phone_video_is_read_upright(
    clip: Path, clip_frames: list[SourceFrame], tmp_path: Path, clockwise: int
) -> None:
    turned = rotate_mp4_display(clip, tmp_path / "portrait.mp4", clockwise)
    info = probe_video(turned)
    assert info.rotation == clockwise
    assert (info.width, info.height) == ((180, 320) if clockwise in (90, 270) else (320, 180))
    frames = list(FrameReader(turned, max_seconds=0.3))
    for frame in frames:
        assert frame.image.shape == (info.height, info.width, 3) and frame.image.flags.c_contiguous
        assert np.array_equal(frame.image, np.rot90(clip_frames[frame.index].image, k=-clockwise // 90))


def test_a_variable_rate_video_is_sampled_at_the_nearest_frame(tmp_path: Path) -> None:
    times_ms = [0, 100, 200, 500, 600, 700, 800, 900, 950, 1000, 1050, 1100, 1200, 1300, 1400, 1500]
    pictures = [np.asarray(cv2.resize(image, (320, 180)), dtype=np.uint8) for image in skimage_images()]
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, ms in enumerate(times_ms):
            picture = av.VideoFrame.from_ndarray(pictures[i % len(pictures)], format="bgr24")
            picture.pts, picture.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    reader = FrameReader(path)
    frames = list(reader)
    assert reader.fps == 10.0 and len(frames) == 16 and not reader.truncated
    seconds = np.array(times_ms) / 1000
    for frame in frames:
        distance = np.abs(seconds - frame.index / reader.fps)
        nearest = int(np.flatnonzero(distance <= distance.min() + 1e-9)[0])  # the earlier one on a tie
        assert frame.source_index == nearest
        assert frame.time == pytest.approx(seconds[nearest])


@pytest.mark.parametrize("clockwise", [0, 90])
def test_frames_decoded_at_a_size_match_the_full_frames_scaled(
    clip: Path, clip_frames: list[SourceFrame], tmp_path: Path, clockwise: int
) -> None:
    """One swscale pass to (w, h) as displayed: the full-size frame area-scaled, upright, frame for frame."""
    video = clip if not clockwise else rotate_mp4_display(clip, tmp_path / "portrait.mp4", clockwise)
    size = (160, 90) if not clockwise else (90, 160)
    small = list(FrameReader(video).iter(size))
    assert [f.source_index for f in small] == [f.source_index for f in clip_frames]
    for frame in small[::7]:
        full = np.rot90(clip_frames[frame.index].image, k=-clockwise // 90)
        expected = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
        assert frame.image.shape == (size[1], size[0], 3) and frame.image.flags.c_contiguous
        assert _mad(frame.image, expected) < 2.0


def test_frames_decoded_without_deblocking_keep_the_schedule_and_stay_close_when_scaled() -> None:
    """Real H.264 footage: the same frames in the same order; at full size the skipped loop filter
    shows (so the option reaches the decoder), scaled to the match phase's size it is nearly averaged away."""
    video = real_clip("bigbuckbunny")
    full = list(FrameReader(video))
    unfiltered = list(FrameReader(video).iter(deblock=False))
    assert [f.source_index for f in unfiltered] == [f.source_index for f in full]
    assert max(_mad(a.image, b.image) for a, b in zip(unfiltered, full, strict=True)) > 1.0
    size = (256, 144)
    small = [f.image for f in FrameReader(video).iter(size, deblock=False)]
    scaled = [cv2.resize(f.image, size, interpolation=cv2.INTER_AREA) for f in full]
    differences = [_mad(a, b) for a, b in zip(small, scaled, strict=True)]
    assert float(np.mean(differences)) < 3.0 and max(differences) < 4.5
