"""Scene cuts from the frames' own feature vectors.

A cut is where a frame's vector turns away from the previous frame's much more than it
has been turning lately, in the spirit of PySceneDetect's adaptive content detector:

    d[t] = 1 - cos(v[t], v[t-1])
    candidate[t] = d[t] >= min_distance and d[t] >= factor * median(d[t-window .. t-1])
    cut[t] = candidate[t] and t >= min_scene and no candidate in the min_scene - 1 frames before t

Frame 0 always starts a scene. The median (not the mean) keeps one earlier cut from
hiding the next; the absolute floor keeps a still shot's encoder noise from making cuts.

Every decision depends on a bounded window: ``cut[t]`` is a function of the vectors of
frames ``t - history .. t`` alone (``CutParams.history``). A resumed render therefore
gets the very same cuts by computing them on the ``history`` frames before its first
frame plus the new ones (``CutDetector(lead_in=...)``); no detector state is checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from shared.errors import UsageError

Vectors = NDArray[np.float32]


@dataclass(frozen=True)
class CutParams:
    window: int = 12  # frames whose median distance is the recent level
    factor: float = 4.0  # a cut turns this many times further than the recent level
    min_distance: float = 0.06  # ... and at least this far (1 - cosine of the weighted query vectors)
    min_scene: int = 8  # frames: no scene is shorter (flashes and fades make no burst of cuts)

    def __post_init__(self) -> None:
        if self.window < 1 or self.min_scene < 1:
            raise UsageError(f"cut window and minimum scene must be >= 1, got {self.window}, {self.min_scene}")
        if not (self.factor >= 1 and 0 <= self.min_distance <= 2):
            raise UsageError(
                f"cut factor must be >= 1 and distance within [0, 2], got {self.factor}, {self.min_distance}"
            )

    @property
    def history(self) -> int:
        """Frames before ``t`` that ``cut[t]`` depends on."""
        return self.window + self.min_scene


def frame_distances(vectors: Vectors) -> NDArray[np.float64]:
    """1 - cosine between each frame's vector and the previous frame's (0 for the first frame)."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    v = v / norms
    d = np.zeros(v.shape[0], dtype=np.float64)
    if v.shape[0] > 1:
        d[1:] = 1.0 - np.einsum("ij,ij->i", v[1:], v[:-1])
    return d


def scene_cuts(vectors: Vectors, params: CutParams = CutParams()) -> NDArray[np.bool_]:
    """One flag per frame: True where a scene starts (always frame 0)."""
    d = frame_distances(vectors)
    n = d.size
    candidate = np.zeros(n, dtype=np.bool_)
    for t in range(1, n):
        recent = d[max(1, t - params.window) : t]
        level = float(np.median(recent)) if recent.size else 0.0
        candidate[t] = d[t] >= params.min_distance and d[t] >= params.factor * level
    cuts = np.zeros(n, dtype=np.bool_)
    if n:
        cuts[0] = True
    for t in range(params.min_scene, n):
        cuts[t] = candidate[t] and not candidate[t - params.min_scene + 1 : t].any()
    return cuts


class CutDetector:
    """Cuts batch by batch, identical to ``scene_cuts`` over the whole clip.

    ``lead_in``: the vectors of the ``params.history`` frames before the first frame to be
    pushed (a resumed render); without it, the first frame pushed is frame 0 of the clip.
    """

    def __init__(self, params: CutParams = CutParams(), lead_in: Vectors | None = None) -> None:
        self.params = params
        # A lead-in shorter than ``history`` must be the clip's first frames (a resume near its start).
        self._tail: Vectors | None = None if lead_in is None or not len(lead_in) else np.asarray(lead_in)

    def push(self, vectors: Vectors) -> NDArray[np.bool_]:
        """Flags of the frames in ``vectors`` (the next frames in order)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        joined = vectors if self._tail is None else np.concatenate([self._tail, vectors])
        cuts = scene_cuts(joined, self.params)
        flags = cuts[joined.shape[0] - vectors.shape[0] :]
        keep = self.params.history + 1
        self._tail = joined[-keep:]
        return flags
