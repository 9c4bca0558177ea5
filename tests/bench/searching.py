"""Search measurements both search benchmarks take: batched timing and recall against exact."""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray

from shared.search import Searcher

Found = tuple[NDArray[np.float32], NDArray[np.int64]]


def timed_search(searcher: Searcher, queries: NDArray[np.float32], k: int, batch: int) -> tuple[float, Found]:
    """ms per query of searching ``queries`` in batches of ``batch``, and the top ``k`` (scores, ids) of each."""
    scores, ids = [], []
    started = time.perf_counter()
    for start in range(0, queries.shape[0], batch):
        s, i = searcher.search(queries[start : start + batch], k)
        scores.append(s)
        ids.append(i)
    ms = 1000 * (time.perf_counter() - started) / queries.shape[0]
    return ms, (np.concatenate(scores), np.concatenate(ids))


def recall_at(found: NDArray[np.int64], truth: NDArray[np.int64]) -> float:
    """Mean share of each row's true ids that ``found`` holds."""
    hits = [np.intersect1d(f, t).size / t.size for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))
