"""ff-render through its API: matching ms/frame (--skip-output) and end-to-end frames/s at 720p.

First, each phase side by side with its limit, in the same run, from the stage timings of
results.json (not timed from outside): a 2,000-image bundle of real JPEGs, the 720p 25 fps
clip (840 frames, every frame a different picture):

- ``--skip-output`` matching frames/s vs decoding the clip to BGR alone (>= 0.8x);
- end to end with frames written (default options) vs libx264 veryfast encoding the SAME
  frames alone, held in a memory-mapped file beforehand (>= 0.9x).

The clip is a 720p H.264 MP4 with AAC audio made from package pictures (data.py); the
pools are the search benchmark's synthetic bundles (real canny features, tiled), whose
rows point at real pool JPEGs, so the end-to-end figures decode real images. Exact
figures use a flat twin of each bundle (same files, no IVF index).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import psutil
from av.video.reformatter import VideoReformatter

from fluxframe_render.match import DEBLOCK_FOR_MATCHING, decode_size
from fluxframe_render.render import RenderOptions, render
from fluxframe_render.video import FrameReader
from shared.bundle import open_bundle
from shared.features.base import normalize_weights, weight_query
from shared.images import load_prepared, prepare_image
from shared.search import exact_search
from tests.bench import data
from tests.bench.common import Context, Row, at_least, at_most, best_pairs, child_dict, size_label
from tests.bench.isolate import ChildFailed
from tests.bench.search_bench import bench_root, synthetic_bundles
from tests.media import make_test_video
from tests.pools import DEGRADATIONS, degrade

GROUP = "render"
# 1,000 frames: two full match batches and a partial one, as in a real render.
CLIP_SECONDS = 40.0
CLIP_FPS = 25
E2E_SIZES = (20_000, 100_000)
LARGEST = 1_000_000  # --large: also rendered end to end with IVF and --no-repeat
MATCH_MS_AT_100K = 10.0  # render issue: matching <= 10 ms/frame at 100k exact
EXACT_MS_AT_500K = 15.0  # scale issue: matching (features + search) exact at 500K
IVF_MS_AT_1M = 3.0  # scale issue: matching with IVF at 1M
E2E_FPS = 25.0
NO_REPEAT_RATIO = 1.5
# Pool sizes whose match loop is also timed with --no-repeat (exact and IVF).
NO_REPEAT_SIZES = (100_000, 1_000_000)
# The limits of the pipeline issue (#14): a real 2,000-image bundle, 840 frames at 720p.
LIMIT_POOL = 2_000
LIMIT_CLIP_SECONDS = 33.6
MATCH_VS_DECODE = 0.8
E2E_VS_ENCODE = 0.9
RECALL_SLACK = 0.01  # recall@1 that decoding at the smaller size may lose
LIMIT_REPEATS = 2  # each limit and its phase, alternately; the fastest of each counts
# --skip-output and decoding alone take ~2-3 s each, and one pair's ratio ranged 0.62-0.86 within
# minutes on this shared machine: five pairs cost ~30 s and let each side meet a quiet moment.
MATCH_REPEATS = 5
MATCH_ROW = "--skip-output matching / decode alone"
RECALL_ROW = "copy recall@1, frames decoded as the match phase does"
E2E_ROW = "end to end / libx264 encode alone"
E2E_CEILING_ROW = "end to end with both cores always busy / libx264 encode alone"
LIMIT_ROWS = (MATCH_ROW, RECALL_ROW, E2E_ROW, E2E_CEILING_ROW)
LIMITS_SECTION = "render-limits"  # docs/performance.md's section for them (report.limits_section)
LIMITS_REPEATED = f"(`--skip-output` and decoding {MATCH_REPEATS} times, the others {LIMIT_REPEATS})"


def render_once(
    video: str, bundle: str, out: str, options: dict[str, Any], keep_video: str | None = None
) -> dict[str, Any]:
    """Child process: one fresh render; returns its counts and its results.json timings.

    ``keep_video``: where to keep the render's MP4 (for the encoder alone to meet the same frames).
    """
    shutil.rmtree(out, ignore_errors=True)
    cpu_started = time.process_time()
    result = render(Path(video), Path(bundle), Path(out), RenderOptions(**options))
    render_cpu_s = time.process_time() - cpu_started  # every thread's: libx264's and the stages'
    written = json.loads(result.results_path.read_text())
    if keep_video is not None and result.video_path is not None:
        Path(keep_video).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(result.video_path, keep_video)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "timings": written["timings"],
        "elapsed": written["elapsed"],
        "pool_root": written["pool_root"],
        "options": options,
        "frames": result.frames,
        "distinct_images": result.distinct_images,
        "repeats": result.repeats,
        "match_seconds": result.match_seconds,
        "output_seconds": result.output_seconds,
        "total_seconds": result.total_seconds,
        "render_cpu_s": render_cpu_s,
        "match_ms_per_frame": result.match_ms_per_frame,
        "frames_per_second": result.frames / result.total_seconds if result.total_seconds > 0 else 0.0,
        "audio": result.audio,
        "missing_images": result.missing_images,
        "warnings": result.warnings,
    }


def _decode_pass(video: str, convert: bool, reformatter: VideoReformatter | None) -> tuple[int, float, float]:
    """(frames, seconds, CPU seconds of every thread) of one threaded decode of ``video``.

    ``convert``: each frame to a BGR array, by ``frame.to_ndarray`` (reformatter None) or the
    reformatter; otherwise H.264 decoding alone, the least any render of the clip does.
    """
    frames = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    with av.open(video) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if convert and reformatter is None:
                frame.to_ndarray(format="bgr24")
            elif convert and reformatter is not None:
                reformatter.reformat(frame, format="bgr24").to_ndarray()
            frames += 1
    return frames, time.perf_counter() - started, time.process_time() - cpu_started


def decode_alone(video: str) -> dict[str, Any]:
    """Child process: the clip decoded to full-size BGR arrays and nothing else (threaded decoder, as ff-render).

    Two ways: ``frame.to_ndarray`` (a new swscale context per frame) and one reused
    reformatter; the faster one is the limit. A third pass decodes without converting:
    the CPU any render of the clip spends at least (``h264_cpu_s``).
    """
    frames, per_frame, _ = _decode_pass(video, True, None)
    _, reused, _ = _decode_pass(video, True, VideoReformatter())
    _, _, h264_cpu = _decode_pass(video, False, None)
    seconds = min(per_frame, reused)
    return {
        "frames": frames,
        "seconds": seconds,
        "fps": frames / seconds,
        "to_ndarray_fps": frames / per_frame,
        "reused_reformatter_fps": frames / reused,
        "h264_cpu_s": h264_cpu,
    }


def _x264_pass(
    out: Path,
    count: int,
    picture: Callable[[int], av.VideoFrame],
    size: tuple[int, int],
    rate: int,
    crf: int,
    preset: str,
) -> tuple[float, float]:
    """(seconds, CPU seconds of every thread, libx264's included) encoding ``picture(i)`` for i < count."""
    started, cpu_started = time.perf_counter(), time.process_time()
    with av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset})
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(count):
            frame = picture(i)
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return time.perf_counter() - started, time.process_time() - cpu_started


def encode_alone(
    video: str, scratch: str, crf: int = 20, preset: str = "veryfast", yuv420p_too: bool = False
) -> dict[str, Any]:
    """Child process: libx264 encoding the frames a render wrote, and nothing else.

    The render's own MP4 is decoded first into a memory-mapped file, untimed, so the encoder
    meets the very pictures the render encoded (colour transfer and all); then every frame is
    converted to I420 (cv2, as video.VideoWriter does) and encoded with the render's crf and preset.
    ``yuv420p_too``: a second pass encodes the same frames held as decoded yuv420p, so nothing
    is converted in the timed loop (``yuv420p_fps``: the encoder with nothing before it).
    """
    raw = Path(scratch) / "frames.bgr"
    out = Path(scratch) / "encoded.mp4"
    raw.parent.mkdir(parents=True, exist_ok=True)
    held: list[av.VideoFrame] = []
    with av.open(video) as container:
        stream = container.streams.video[0]
        rate = round(float(stream.average_rate or 25))
        decoded = []
        for f in container.decode(stream):
            decoded.append(f.to_ndarray(format="bgr24"))
            if yuv420p_too:
                held.append(f.reformat(format="yuv420p"))
    height, width = decoded[0].shape[:2]
    frames = np.memmap(raw, dtype=np.uint8, mode="w+", shape=(len(decoded), height, width, 3))
    for i, image in enumerate(decoded):
        frames[i] = image
    frames.flush()
    count = len(decoded)
    del decoded

    def from_bgr(i: int) -> av.VideoFrame:
        planes = np.asarray(cv2.cvtColor(frames[i], cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
        return av.VideoFrame.from_ndarray(planes, format="yuv420p")

    seconds, cpu_s = _x264_pass(out, count, from_bgr, (width, height), rate, crf, preset)
    result = {"frames": count, "seconds": seconds, "fps": count / seconds, "encode_cpu_s": cpu_s}
    if yuv420p_too:
        yuv_seconds, _ = _x264_pass(out, count, held.__getitem__, (width, height), rate, crf, preset)
        result["yuv420p_fps"] = count / yuv_seconds
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def decode_scale_recall(bundle: str, pool_root: str, scratch: str, frames: int = 240) -> dict[str, Any]:
    """Child process: what decoding frames as the match phase does costs in retrieval.

    A 720p video of ``frames`` degraded pool pictures (tests/pools.py's degradations, one
    picture per frame) is described twice: frames decoded at full size and prepared by
    prepare_image, and frames decoded as the match phase does (straight to match.decode_size,
    without deblocking unless DEBLOCK_FOR_MATCHING) and then prepared. Each
    query's top-1 over the whole bundle (exact, default weights) is compared with its original.
    """
    opened = open_bundle(Path(bundle), verify=False)
    rng = np.random.default_rng(3)
    ids = [int(i) for i in rng.choice(opened.count, size=frames, replace=False)]
    pictures = [load_prepared(p, (1280, 720))[0] for p in opened.image_paths(ids, Path(pool_root))]
    degraded = [degrade(img, DEGRADATIONS[n % len(DEGRADATIONS)], rng) for n, img in enumerate(pictures)]
    work = Path(scratch)
    work.mkdir(parents=True, exist_ok=True)
    video = make_test_video(
        work / "copies.mp4", degraded, fps=5, seconds_per_image=0.2, size=(1280, 720), audio=False, motion=False
    )
    size = opened.spec.prepared_size()
    extractor = opened.extractor()
    weights = normalize_weights(opened.manifest.blocks, RenderOptions().weights())
    expected = np.asarray(ids, dtype=np.int64)
    out: dict[str, Any] = {"frames": frames, "decode_size": decode_size((1280, 720), size)}
    queries = {}
    as_matched = (decode_size((1280, 720), size), DEBLOCK_FOR_MATCHING)
    for name, (decoded_at, deblock) in (("full", (None, True)), ("scaled", as_matched)):
        prepared = [prepare_image(f.image, size) for f in FrameReader(video).iter(decoded_at, deblock=deblock)]
        queries[name] = weight_query(extractor.extract(prepared), extractor.blocks, weights)
        scores, found = exact_search(np.asarray(opened.vectors), queries[name], 1)
        out[f"recall_at_1_{name}"] = float((found[: len(ids), 0] == expected[: found.shape[0]]).mean())
        out[f"mean_top1_score_{name}"] = float(scores[:, 0].mean())
    full, scaled = queries["full"], queries["scaled"]
    cosine = (full * scaled).sum(1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(scaled, axis=1))
    out["query_cosine_mean"] = float(cosine.mean())
    out["query_cosine_min"] = float(cosine.min())
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _stage_note(timings: dict[str, Any]) -> str:
    """Busy / waiting seconds of every stage of a phase, from results.json."""
    stages = timings["stages"]
    return ", ".join(f"{k} {v['busy_s']:.1f}/{v['waiting_s']:.1f}" for k, v in stages.items())


def _limit_fps(r: dict[str, Any]) -> float:
    return float(r["fps"])


def _phase_fps(r: dict[str, Any], phases: tuple[str, ...]) -> float:
    """Frames per second of a render's phases, from the seconds its results.json records."""
    return float(r["frames"] / sum(r["timings"][p]["seconds"] for p in phases))


def _limits(ctx: Context, figures: dict[str, Any]) -> None:
    """Each phase against what its slowest outside part alone allows, in one run (issue #14)."""
    pool = data.pool_dir(LIMIT_POOL, ctx.jobs)
    bundle = bench_root() / f"canny-real-{LIMIT_POOL}"
    ctx.log(f"real canny bundle of {size_label(LIMIT_POOL)} pool pictures -> {bundle} (cached)")
    ctx.isolated(
        GROUP, "tests.bench.search_bench:build_real_bundle", {"pool": str(pool), "dest": str(bundle)}, measure=False
    )
    clip = data.ensure_clip(LIMIT_CLIP_SECONDS, CLIP_FPS, (1280, 720))
    setting = f"{size_label(LIMIT_POOL)} real JPEGs, 720p {CLIP_FPS} fps, {LIMIT_CLIP_SECONDS:g} s"

    def decode() -> dict[str, Any]:
        ctx.log("decoding the clip to BGR alone")
        return child_dict(ctx.isolated(GROUP, "tests.bench.render_bench:decode_alone", {"video": str(clip)}))

    def match_only() -> dict[str, Any] | None:
        ctx.log("render --skip-output")
        return _render(ctx, clip, bundle, "limit-match", skip_output=True, verify=False, seed=1)

    pair = best_pairs(decode, match_only, _limit_fps, lambda r: _phase_fps(r, ("match",)), MATCH_REPEATS)
    h264_cpu: float | None = None  # CPU seconds decoding the clip costs, the least a render spends
    if pair is not None:
        decoded, matched = pair
        h264_cpu = decoded["h264_cpu_s"]
        match = matched["timings"]["match"]
        fps = _phase_fps(matched, ("match",))
        ratio = fps / decoded["fps"]
        figures["limit_match"] = {"render": matched, "decode_alone": decoded}
        note = (
            f"{fps:.0f} fps vs decode alone {decoded['fps']:.0f} fps "
            f"(to_ndarray per frame {decoded['to_ndarray_fps']:.0f}); peak RSS {matched['peak_tree_rss_mb']:.0f} MB; "
            f"busy/waiting s: {_stage_note(match)}"
        )
        target = f">= {MATCH_VS_DECODE}"
        ctx.add(Row(GROUP, MATCH_ROW, setting, ratio, "x", target, ratio >= MATCH_VS_DECODE, note))

    ctx.log("recall cost of decoding frames as the match phase does")
    recall = child_dict(
        ctx.isolated(
            GROUP,
            "tests.bench.render_bench:decode_scale_recall",
            {"bundle": str(bundle), "pool_root": str(pool), "scratch": str(ctx.work / "decode-recall")},
            measure=False,
        )
    )
    figures["decode_scale_recall"] = recall
    full_recall, scaled_recall = recall["recall_at_1_full"], recall["recall_at_1_scaled"]
    width, height = recall["decode_size"]
    deblocking = f"decoded at {width}x{height}, " + ("deblocked" if DEBLOCK_FOR_MATCHING else "not deblocked")
    note = (
        f"{deblocking}; full-size deblocked decode {full_recall:.3f}; "
        f"top-1 score {recall['mean_top1_score_scaled']:.4f} vs "
        f"{recall['mean_top1_score_full']:.4f}; query cosine mean {recall['query_cosine_mean']:.4f}, "
        f"min {recall['query_cosine_min']:.4f}"
    )
    ok = scaled_recall >= full_recall - RECALL_SLACK
    where = f"{recall['frames']} degraded pool pictures, 720p"
    ctx.add(Row(GROUP, RECALL_ROW, where, scaled_recall, "", f">= full-size - {RECALL_SLACK}", ok, note))

    # Default options (colour transfer on), and colour transfer off as the render issue measured it.
    _e2e_vs_encoder(ctx, clip, bundle, setting, figures, "limit_e2e", {}, h264_cpu)
    no_colour = setting + ", --color-transfer off"
    _e2e_vs_encoder(ctx, clip, bundle, no_colour, figures, "limit_e2e_no_colour", {"color_transfer": "off"}, h264_cpu)


def _elapsed_fps(r: dict[str, Any]) -> float:
    """Frames per second of a whole render (match and output overlap: their wall time, not their sum)."""
    return float(r["frames"] / r["elapsed"]["render_s"])


def _e2e_vs_encoder(
    ctx: Context,
    clip: Path,
    bundle: Path,
    setting: str,
    figures: dict[str, Any],
    key: str,
    options: dict[str, Any],
    h264_cpu: float | None,
) -> None:
    """The render with frames written beside libx264 encoding the render's own output frames alone."""
    ctx.log(f"render end to end, frames written ({setting}); its MP4 feeds the encoder alone")
    kept = ctx.work / f"{key}-output.mp4"
    first = _render(ctx, clip, bundle, "limit-e2e", seed=1, verify=False, keep_video=str(kept), **options)
    if first is None:
        return
    args = {"video": str(kept), "scratch": str(ctx.work / "encode-alone")}
    renders = [first]

    def encode() -> dict[str, Any]:
        ctx.log("libx264 veryfast encoding the same frames alone")
        return child_dict(ctx.isolated(GROUP, "tests.bench.render_bench:encode_alone", args))

    def end_to_end() -> dict[str, Any] | None:
        if renders:
            return renders.pop()  # the render already made, alternating with the encoder from here
        ctx.log("render end to end, frames written")
        return _render(ctx, clip, bundle, "limit-e2e", seed=1, verify=False, **options)

    try:
        pair = best_pairs(encode, end_to_end, _limit_fps, _elapsed_fps, LIMIT_REPEATS)
    finally:
        kept.unlink(missing_ok=True)
    if pair is None:
        return
    encoded, full = pair
    fps = _elapsed_fps(full)
    ratio = fps / encoded["fps"]
    figures[key] = {"render": full, "encode_alone": encoded}
    note = (
        f"{fps:.1f} fps vs encode alone {encoded['fps']:.1f} fps; peak RSS {full['peak_tree_rss_mb']:.0f} MB; "
        f"match {full['timings']['match']['seconds']:.1f} s beside output "
        f"{full['timings']['output']['seconds']:.1f} s; "
        f"output busy/waiting s: {_stage_note(full['timings']['output'])}"
    )
    ctx.add(Row(GROUP, E2E_ROW, setting, ratio, "x", f">= {E2E_VS_ENCODE}", ratio >= E2E_VS_ENCODE, note))
    ctx.add(_ceiling_row(setting, full, encoded, h264_cpu))


def _ceiling_row(setting: str, full: dict[str, Any], encoded: dict[str, Any], h264_cpu: float | None) -> Row:
    """What perfect overlap could reach: the render's CPU seconds spread over every core without a gap.

    No scheduling makes a render finish sooner than its CPU work divided by the cores, so this
    ratio bounds what overlapping stages can still gain; below the target, only less work can
    meet it. The note sets the CPU the target leaves beside libx264 against what the render spent.
    """
    cores = psutil.cpu_count() or 1
    render_cpu, encode_cpu = full["render_cpu_s"], encoded["encode_cpu_s"]
    ceiling = encoded["seconds"] / (render_cpu / cores)
    allowed = cores * encoded["seconds"] / E2E_VS_ENCODE  # CPU seconds a render at the target may use
    busy = {k: v["busy_s"] for k, v in full["timings"]["output"]["stages"].items()}
    note = (
        f"render {render_cpu:.1f} CPU s on {cores} cores; libx264 alone {encode_cpu:.1f} CPU s in "
        f"{encoded['seconds']:.1f} s ({encode_cpu / encoded['seconds']:.2f} cores); at {E2E_VS_ENCODE}x a render "
        f"has {allowed:.1f} CPU s, {allowed - encode_cpu:.1f} beside libx264's, and spent "
        f"{render_cpu - encode_cpu:.1f} on the rest (colour {busy.get('colour', 0.0):.1f}, "
        f"quality {busy.get('quality', 0.0):.1f}, output decode {busy.get('decode', 0.0):.1f}, "
        f"match phase {full['timings']['match']['seconds']:.1f} s)"
    )
    if h264_cpu is not None:
        note += f"; decoding the clip alone, without converting a frame, costs {h264_cpu:.1f} CPU s"
    return Row(GROUP, E2E_CEILING_ROW, setting, ceiling, "x", note=note)


def _flat_twin(ctx: Context, ivf_bundle: Path) -> Path:
    dest = bench_root() / f"{ivf_bundle.name}-flat"
    args = {"source_path": str(ivf_bundle), "dest_path": str(dest)}
    ctx.isolated(GROUP, "tests.bench.synth:make_flat_twin", args, measure=False)
    return dest


def _render(
    ctx: Context, clip: Path, bundle: Path, name: str, *, keep_video: str | None = None, **options: Any
) -> dict[str, Any] | None:
    """One render in a fresh process; a crash becomes a row of the table, not the end of the group."""
    out = ctx.work / f"render-{name}"
    args = {"video": str(clip), "bundle": str(bundle), "out": str(out), "options": options, "keep_video": keep_video}
    try:
        return child_dict(ctx.isolated(GROUP, "tests.bench.render_bench:render_once", args))
    except ChildFailed as exc:
        ctx.add(Row(GROUP, f"render {name}", "failed", None, "", note=str(exc).splitlines()[0]))
        return None


def _match_target(kind: str, n: int, ms: dict[str, float]) -> tuple[str, bool | None]:
    """The render issue's target is on the whole match loop; the scale issue's on features + search."""
    if kind == "exact" and n == 100_000:
        return at_most(ms["total"], MATCH_MS_AT_100K)
    if kind == "exact" and n == 500_000:
        return at_most(features_and_search(ms), EXACT_MS_AT_500K)
    if kind == "IVF" and n == 1_000_000:
        return at_most(features_and_search(ms), IVF_MS_AT_1M)
    return "", None


def features_and_search(ms: dict[str, float]) -> float:
    """ms/frame of the match loop without waiting for video frames (decoded in a thread meanwhile)."""
    return ms["describe"] + ms["search"] + ms["select"]


def _matching(ctx: Context, clip: Path, n: int, kind: str, bundle: Path, figures: dict[str, Any]) -> None:
    label = size_label(n)
    ctx.log(f"render matching only, {label} pool, {kind}")
    r = _render(ctx, clip, bundle, f"match-{label}-{kind}", skip_output=True, verify=False, seed=1)
    if r is None:
        return
    figures[f"match_{label}_{kind}"] = r
    ms = r["match_ms_per_frame"]
    target, met = _match_target(kind, n, ms)
    stages = ", ".join(f"{k} {v:.2f}" for k, v in ms.items() if k != "total")
    setting = f"{label} pool, --skip-output"
    if n >= 500_000:
        ctx.add(Row(GROUP, f"matching ms/frame ({kind})", setting, ms["total"], "ms", note=stages))
        name = f"features + search ms/frame ({kind})"
        ctx.add(Row(GROUP, name, setting, features_and_search(ms), "ms", target, met, "describe + search + select"))
    else:
        ctx.add(Row(GROUP, f"matching ms/frame ({kind})", setting, ms["total"], "ms", target, met, stages))
    if n not in NO_REPEAT_SIZES:
        return
    ctx.log(f"render matching only with --no-repeat, {label} pool, {kind}")
    nr = _render(ctx, clip, bundle, f"norepeat-{label}-{kind}", skip_output=True, verify=False, no_repeat=True)
    if nr is None:
        return
    figures[f"match_{label}_{kind}_no_repeat"] = nr
    nms = nr["match_ms_per_frame"]["total"]
    ratio = nms / ms["total"] if ms["total"] > 0 else 0.0
    ok = ratio <= NO_REPEAT_RATIO and nr["repeats"] == 0
    note = f"{ratio:.2f}x of repeat; repeats {nr['repeats']}"
    target = f"<= {NO_REPEAT_RATIO} x repeat"
    ctx.add(Row(GROUP, f"matching ms/frame ({kind}, --no-repeat)", setting, nms, "ms", target, ok, note))


def _end_to_end(
    ctx: Context,
    clip: Path,
    n: int,
    bundle: Path,
    clip_label: str,
    figures: dict[str, Any],
    *,
    kind: str = "exact",
    frame_options: tuple[bool, ...] = (True, False),
    **options: Any,
) -> None:
    label = size_label(n)
    flags = " --no-repeat" if options.get("no_repeat") else ""
    for frames_too in frame_options:
        name = "frames" if frames_too else "no-frames"
        ctx.log(f"render end to end, {label} pool, {kind}{flags}, {name}")
        run_name = f"e2e-{label}-{kind}{flags.replace(' ', '')}-{name}"
        r = _render(ctx, clip, bundle, run_name, seed=1, save_frames=frames_too, **options)
        if r is None:
            continue
        figures[run_name.replace("-", "_")] = r
        target, met = at_least(r["frames_per_second"], E2E_FPS)
        setting = f"{label} pool, {kind}{flags}, {clip_label}" + ("" if frames_too else ", --no-frames")
        note = f"match {r['match_seconds']:.1f} s + output {r['output_seconds']:.1f} s; audio {r['audio']}"
        if r["missing_images"]:
            note += f"; {r['missing_images']} pool images missing (rendered grey)"
        ctx.add(Row(GROUP, "end-to-end frames/s", setting, r["frames_per_second"], "fps", target, met, note))


def run(ctx: Context) -> None:
    figures: dict[str, Any] = {}
    _limits(ctx, figures)
    ctx.detail(GROUP, "figures", figures)
    if ctx.quick:
        return  # the limits are the quick check; the synthetic pools take a long build
    clip_seconds = CLIP_SECONDS
    clip = data.ensure_clip(clip_seconds, CLIP_FPS, (1280, 720))
    bundles = synthetic_bundles(ctx)
    clip_label = f"720p H.264, {clip_seconds:g} s at {CLIP_FPS} fps"
    flats = {n: _flat_twin(ctx, path) for n, path in bundles.items()}
    for n, ivf_bundle in bundles.items():
        since = len(ctx.rows)
        _matching(ctx, clip, n, "exact", flats[n], figures)
        if n >= 100_000:
            _matching(ctx, clip, n, "IVF", ivf_bundle, figures)
        if n >= 500_000:
            ctx.mark_large_only(since)
    for n in E2E_SIZES:
        if n in flats:
            _end_to_end(ctx, clip, n, flats[n], clip_label, figures)
    if LARGEST in bundles:
        # The headline case: the largest pool, IVF, every frame a different picture.
        since = len(ctx.rows)
        _end_to_end(
            ctx,
            clip,
            LARGEST,
            bundles[LARGEST],
            clip_label,
            figures,
            kind="IVF",
            frame_options=(True,),
            no_repeat=True,
            verify=False,
        )
        ctx.mark_large_only(since)
    ctx.detail(GROUP, "figures", figures)
