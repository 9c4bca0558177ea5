"""JPEG decoding at 1/4 scale, one core: OpenCV IMREAD_REDUCED_COLOR_4 vs simplejpeg (ms/image).

The figures behind README's dependency table. Pictures are the benchmark pool's (tests/bench/data.py):
real photos, cropped, recoloured and resized to <= 1280 px, then encoded at the JPEG quality that
brings them nearest to ~100 KB. Run with ``taskset -c 0 .venv/bin/python -m tests.bench.jpeg_decode_bench``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np
import simplejpeg

from tests.bench.data import variant

TARGET_BYTES = 100_000


def jpeg_near_target(image: np.ndarray, target: int = TARGET_BYTES) -> bytes:
    """The encoding of ``image`` whose size is closest to ``target`` bytes (qualities 60..95)."""
    encodings = [bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, q])[1]) for q in range(60, 96, 5)]
    return min(encodings, key=lambda data: abs(len(data) - target))


def decode_opencv(data: bytes) -> np.ndarray:
    return np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_4))


def decode_simplejpeg(data: bytes) -> np.ndarray:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return np.asarray(
        simplejpeg.decode_jpeg(data, colorspace="BGR", min_width=-(-width // 4), min_height=-(-height // 4))
    )


def best_ms_per_image(
    decoders: dict[str, Callable[[bytes], np.ndarray]], payloads: list[bytes], rounds: int
) -> dict[str, float]:
    """Best pass of ``rounds`` per decoder, the decoders taking turns pass by pass: on a shared
    machine the least disturbed pass is the figure, and turns expose both to the same load."""
    best = dict.fromkeys(decoders, float("inf"))
    for _ in range(rounds):
        for name, decode in decoders.items():
            start = time.perf_counter()
            for data in payloads:
                decode(data)
            best[name] = min(best[name], (time.perf_counter() - start) * 1000 / len(payloads))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    payloads = []
    for index in range(args.images * 4):
        image, _ = variant(index)
        if max(image.shape[:2]) >= 960:  # large pictures, where the scale matters
            payloads.append(jpeg_near_target(image))
        if len(payloads) == args.images:
            break
    for a, b in zip(map(decode_opencv, payloads[:20]), map(decode_simplejpeg, payloads[:20]), strict=True):
        assert a.shape == b.shape, (a.shape, b.shape)
    sizes = [len(p) for p in payloads]
    print(f"{len(payloads)} JPEGs, median {statistics.median(sizes) / 1000:.0f} KB, one thread, best of {args.rounds}")
    decoders: dict[str, Callable[[bytes], np.ndarray]] = {
        "opencv IMREAD_REDUCED_COLOR_4": decode_opencv,
        "simplejpeg 1/4": decode_simplejpeg,
    }
    for name, ms in best_ms_per_image(decoders, payloads, args.rounds).items():
        print(f"{name:32s} {ms:.3f} ms/image")


if __name__ == "__main__":
    main()
