"""`make -j 2 renders` on two videos: the memory of two side-by-side ff-renders on one bundle.

Every few milliseconds the ff-render processes under make are read in /proc: VmRSS with its
anonymous and file-backed parts (status), the proportional share PSS (smaps_rollup, which
counts a page two processes share once in their sum), and the bundle's vectors.npy mapping
(smaps, found by inode): its resident pages, how many are shared with the other render and
how many are anonymous. A mapped bundle shows as a file-backed mapping whose pages are
shared; a copied one would show as anonymous memory the size of the vectors, in each process.

The bundle is the benchmark's 20k flat bundle when .bench/ has it (else its 5k real one,
else a bundle of 2,000 pool JPEGs made here); the videos are 640x360, 10 s, 25 fps, made here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from shared.atomic import atomic_write_json
from shared.bundle import VECTORS, open_bundle
from tests.bench import data
from tests.media import make_test_video, skimage_images
from tests.pools import make_pool

GROUP = "batch"
ROOT = Path(__file__).resolve().parents[2]
SAMPLE_SECONDS = 0.05
VIDEO_SIZE = (640, 360)
VIDEO_SECONDS = 10.0
VIDEO_FPS = 25.0
FALLBACK_POOL = 2000
KB = 1024
MB = 1024 * 1024


@dataclass
class ProcessPeak:
    """One ff-render's largest figures over the run (bytes)."""

    pid: int
    video: str
    vm_hwm: int = 0  # the kernel's own peak RSS of the process
    rss_anon: int = 0
    rss_file: int = 0
    private: int = 0  # Private_Clean + Private_Dirty: what this process alone holds
    # Its vectors.npy mapping when the most of it was shared with another process:
    vectors_rss: int = 0  # resident pages
    vectors_pss: int = 0  # their proportional share
    vectors_shared: int = 0  # pages also mapped by another process
    vectors_anonymous: int = 0  # copy-on-write copies (0 for a read-only map)


@dataclass
class Sampled:
    processes: dict[int, ProcessPeak] = field(default_factory=dict)
    peak_rss_sum: int = 0  # largest sum of VmRSS over the renders running at one moment
    peak_pss_sum: int = 0
    both_mapped: int = 0  # samples in which two renders mapped vectors.npy at once


def _fields(path: Path, wanted: tuple[str, ...]) -> dict[str, int]:
    """``Name:   123 kB`` lines of a /proc file, in bytes."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in wanted:
            out[name] = int(rest.split()[0]) * KB
    return out


def _mapping(pid: int, inode: int) -> dict[str, int]:
    """Summed smaps fields of every mapping of the file with ``inode`` (empty if none)."""
    totals: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            inside = head[4] == str(inode)
        elif inside and line.endswith(" kB"):
            name, _, rest = line.partition(":")
            totals[name] = totals.get(name, 0) + int(rest.split()[0]) * KB
    return totals


def _video_of(proc: psutil.Process) -> str | None:
    """The video argument when ``proc`` is an ff-render (the console script run by python)."""
    args = [str(arg) for arg in proc.cmdline()]
    for i, arg in enumerate(args[:-1]):
        if os.path.basename(arg) == "ff-render":
            return os.path.basename(args[i + 1])
    return None


class _Sampler(threading.Thread):
    def __init__(self, make_pid: int, vectors_inode: int) -> None:
        super().__init__(daemon=True)
        self.make_pid = make_pid
        self.inode = vectors_inode
        self.result = Sampled()
        self._stop_event = threading.Event()

    def run(self) -> None:
        make = psutil.Process(self.make_pid)
        while not self._stop_event.is_set():
            try:
                children = make.children(recursive=True)
            except psutil.Error:
                return
            rss_sum = pss_sum = mapped = 0
            for proc in children:
                try:
                    video = _video_of(proc)
                    if video is None:
                        continue
                    status = _fields(Path(f"/proc/{proc.pid}/status"), ("VmRSS", "VmHWM", "RssAnon", "RssFile"))
                    rollup = _fields(Path(f"/proc/{proc.pid}/smaps_rollup"), ("Pss", "Private_Clean", "Private_Dirty"))
                    vectors = _mapping(proc.pid, self.inode)
                except (psutil.Error, OSError, ValueError):
                    continue  # a render that just exited
                peak = self.result.processes.setdefault(proc.pid, ProcessPeak(proc.pid, video))
                peak.vm_hwm = max(peak.vm_hwm, status.get("VmHWM", 0))
                peak.rss_anon = max(peak.rss_anon, status.get("RssAnon", 0))
                peak.rss_file = max(peak.rss_file, status.get("RssFile", 0))
                peak.private = max(peak.private, rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0))
                if vectors:
                    mapped += 1
                    rss, shared = vectors.get("Rss", 0), vectors.get("Shared_Clean", 0) + vectors.get("Shared_Dirty", 0)
                    # The moment most of it was shared with the other render (both running), then the largest.
                    if (shared, rss) >= (peak.vectors_shared, peak.vectors_rss):
                        peak.vectors_rss, peak.vectors_shared = rss, shared
                        peak.vectors_pss = vectors.get("Pss", 0)
                        peak.vectors_anonymous = vectors.get("Anonymous", 0)
                rss_sum += status.get("VmRSS", 0)
                pss_sum += rollup.get("Pss", 0)
            self.result.peak_rss_sum = max(self.result.peak_rss_sum, rss_sum)
            self.result.peak_pss_sum = max(self.result.peak_pss_sum, pss_sum)
            self.result.both_mapped += mapped >= 2
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> Sampled:
        self._stop_event.set()
        self.join()
        return self.result


def make_env() -> dict[str, str]:
    # Under `make bench` the outer make's flags and jobserver must not reach this make.
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")}


def make_command(out_dir: Path, *args: str) -> list[str]:
    """make on the checkout with the running environment's tools and a current install stamp."""
    stamp = out_dir / "installed"
    stamp.touch()  # this environment is installed already: make must not reinstall it
    tools = [f"BIN={Path(sys.executable).parent}", f"STAMP={stamp}"]
    return ["make", "-C", str(ROOT), "--no-print-directory", *tools, *args]


def _choose_bundle(out_dir: Path) -> Path:
    """The benchmark's 20k flat bundle, else its 5k real one, else one of a pool made here."""
    bundles = data.BENCH_ROOT / "bundles"
    flat, ivf = bundles / "canny-synthetic-20k-flat", bundles / "canny-synthetic-20k"
    if not (flat / "manifest.json").is_file() and (ivf / "manifest.json").is_file():
        from tests.bench.synth import make_flat_twin

        make_flat_twin(str(ivf), str(flat))
    for candidate in (flat, bundles / "canny-real-5000"):
        if (candidate / "manifest.json").is_file() and open_bundle(candidate, verify=False).pool_root.is_dir():
            return candidate
    pool, bundle = out_dir / "pool", out_dir / "bundle"
    if not (bundle / "manifest.json").is_file():
        make_pool(pool, FALLBACK_POOL, seed=11)
        index = [f"POOL={pool}", f"BUNDLE={bundle}", "INDEX_ARGS=--jobs 2 --quiet"]
        subprocess.run(make_command(out_dir, "index", *index), check=True, env=make_env())
    return bundle


def _videos(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pictures = skimage_images()
    per_image = VIDEO_SECONDS / len(pictures)
    for name, order in (("first", pictures), ("second", pictures[::-1])):
        path = folder / f"{name}.mp4"
        if not path.exists():
            partial = folder / f".{name}.partial.mp4"
            make_test_video(partial, order, fps=VIDEO_FPS, seconds_per_image=per_image, size=VIDEO_SIZE)
            partial.rename(path)
    return folder


def _row(name: str, setting: str, value: float, unit: str, note: str = "") -> dict[str, object]:
    """A row of the benchmark table (the fields of tests.bench.common.Row)."""
    return {
        "group": GROUP,
        "name": name,
        "setting": setting,
        "value": round(value, 1),
        "unit": unit,
        "target": "",
        "met": None,
        "note": note,
    }


def run(out_dir: Path) -> list[dict[str, object]]:
    """Render two videos with ``make -j 2 renders`` and report the renders' memory."""
    out_dir = out_dir.absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = _choose_bundle(out_dir)
    opened = open_bundle(bundle, verify=False)
    vectors = bundle / VECTORS
    vectors_bytes = vectors.stat().st_size
    videos = _videos(out_dir / "videos")
    outroot = out_dir / "renders"
    shutil.rmtree(outroot, ignore_errors=True)
    command = make_command(out_dir, "-j", "2", "renders", f"VIDEOS={videos}", f"BUNDLE={bundle}", f"OUTROOT={outroot}")
    log = out_dir / "batch_make.log"
    started = time.perf_counter()
    with open(log, "w") as handle:
        make = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=make_env())
        sampler = _Sampler(make.pid, vectors.stat().st_ino)
        sampler.start()
        code = make.wait()
        sampled = sampler.stop()
    seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"make -j 2 renders failed ({code}); see {log}")
    frames = sum(json.loads((d / "results.json").read_text())["counts"]["frames"] for d in outroot.iterdir())
    peaks = list(sampled.processes.values())
    if len(peaks) != 2:
        raise RuntimeError(f"expected 2 ff-render processes under make, sampled {len(peaks)}")
    setting = (
        f"2 videos {VIDEO_SIZE[0]}x{VIDEO_SIZE[1]} {VIDEO_SECONDS:g} s at {VIDEO_FPS:g} fps, "
        f"{opened.count:,}-image {opened.manifest.index.kind} bundle (vectors.npy {vectors_bytes / MB:.1f} MB)"
    )
    shared_note = ", ".join(
        f"{p.video}: {p.vectors_rss / MB:.1f} MB resident, {p.vectors_shared / MB:.1f} MB shared, "
        f"{p.vectors_anonymous / MB:.1f} MB anonymous"
        for p in peaks
    )
    details = {
        "command": command,
        "bundle": str(bundle),
        "vectors_bytes": vectors_bytes,
        "seconds": seconds,
        "frames": frames,
        "peak_rss_sum": sampled.peak_rss_sum,
        "peak_pss_sum": sampled.peak_pss_sum,
        "samples_with_both_mapped": sampled.both_mapped,
        "processes": [asdict(p) for p in peaks],
    }
    atomic_write_json(out_dir / "batch_bench.json", details)
    return [
        _row("make -j 2 renders: combined peak RSS", setting, sampled.peak_rss_sum / MB, "MB"),
        _row(
            "make -j 2 renders: combined peak PSS",
            setting,
            sampled.peak_pss_sum / MB,
            "MB",
            "shared pages counted once",
        ),
        _row("ff-render peak RSS (each)", setting, max(p.vm_hwm for p in peaks) / MB, "MB", "kernel VmHWM"),
        _row("ff-render peak anonymous RSS (each)", setting, max(p.rss_anon for p in peaks) / MB, "MB"),
        _row("ff-render peak private memory (each)", setting, max(p.private for p in peaks) / MB, "MB", "USS"),
        _row(
            "vectors.npy mapped and shared in each render",
            setting,
            min(p.vectors_shared for p in peaks) / MB,
            "MB",
            f"{shared_note}; both mapped it in {sampled.both_mapped} samples",
        ),
        _row("make -j 2 renders: wall time", setting, seconds, "s", f"{frames} frames in all"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("bench-out") / "batch")
    args = parser.parse_args()
    for row in run(args.out):
        print(f"{row['name']}: {row['value']} {row['unit']}  ({row['setting']}) {row['note']}")


if __name__ == "__main__":
    main()
