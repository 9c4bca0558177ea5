"""What every feature extractor is, and the block arithmetic that makes weights work at query time.

A vector is a concatenation of blocks (edge, texture, colour; or one neural block).
Each block is L2-normalised and the whole is scaled by 1/sqrt(number of blocks), so
stored vectors have unit norm. A query built by :func:`weight_query` then scores
exactly ``sum(w_b * cos_b)`` against any stored vector, with weights normalised to
sum to 1: weights are chosen at render time, never baked into an index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from shared.errors import UsageError
from shared.spec import FeatureSpec

Image = NDArray[np.uint8]  # H x W x 3, BGR, already prepared to spec.prepared_size()
Vectors = NDArray[np.float32]

BLOCK_NAMES = ("edge", "texture", "color")


@dataclass(frozen=True)
class Block:
    name: str  # "edge", "texture", "color" or "neural"
    dim: int


class Extractor(Protocol):
    """Turns a batch of prepared images into float32 [n, dim] vectors of unit norm."""

    @property
    def spec(self) -> FeatureSpec: ...

    @property
    def blocks(self) -> tuple[Block, ...]: ...

    def extract(self, images: Sequence[Image]) -> Vectors: ...


class PrepareAssets(Protocol):
    """Write the files a method's extractor needs (projection.npy, model.onnx) into ``dest``; return their names.

    ``model_file`` is the neural model resolve_model() chose (None: looked up in the model
    cache by the spec's model_sha256); methods without a model ignore it.
    """

    def __call__(self, spec: FeatureSpec, dest: Path, model_file: Path | None = None) -> list[str]: ...


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    neural: bool
    # Build the extractor; asset_dir holds what prepare_assets wrote (a bundle or its staging dir).
    factory: Callable[[FeatureSpec, Path], Extractor]
    prepare_assets: PrepareAssets
    # (ready, what to run to make it ready) — neural methods need an exported model.
    readiness: Callable[[], tuple[bool, str]]
    # Dimension of the vectors for a spec, without building anything.
    dim: Callable[[FeatureSpec], int]


def no_assets(spec: FeatureSpec, dest: Path, model_file: Path | None = None) -> list[str]:
    return []


def always_ready() -> tuple[bool, str]:
    return True, ""


def l2_normalize_rows(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (no NaN)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return np.asarray(x / norms, dtype=np.float32)


def finish_blocks(blocks: Sequence[NDArray[np.float32]]) -> Vectors:
    """Normalise each block, concatenate, scale so the whole vector has unit norm."""
    scale = np.float32(1.0 / np.sqrt(len(blocks)))
    parts = [l2_normalize_rows(np.asarray(b, dtype=np.float32)) * scale for b in blocks]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


# The edge / texture / colour weights a query uses unless told otherwise (ff-render, ff-index compare).
DEFAULT_WEIGHTS: dict[str, float] = {"edge": 0.33, "texture": 0.33, "color": 0.34}


def normalize_weights(blocks: Sequence[Block], weights: dict[str, float]) -> dict[str, float]:
    """Weights for the blocks present, normalised to sum to 1 (neural: one block, weight 1)."""
    names = [b.name for b in blocks]
    if names == ["neural"]:
        return {"neural": 1.0}
    for name, w in weights.items():
        if not np.isfinite(w) or w < 0:
            raise UsageError(f"{name} weight must be >= 0, got {w}")
    chosen = {n: float(weights.get(n, 0.0)) for n in names}
    total = sum(chosen.values())
    if total <= 0:
        raise UsageError("at least one of the edge, texture and colour weights must be > 0")
    return {n: w / total for n, w in chosen.items()}


def weight_query(queries: Vectors, blocks: Sequence[Block], weights: dict[str, float]) -> Vectors:
    """Scale stored-format query vectors so that <query, vector> = sum(w_b * cos_b)."""
    norm = normalize_weights(blocks, weights)
    out = np.array(queries, dtype=np.float32, copy=True)
    # Stored blocks have norm 1/sqrt(B); multiplying the query block by w*B undoes both factors.
    factor = float(len(blocks))
    start = 0
    for b in blocks:
        out[:, start : start + b.dim] *= np.float32(norm[b.name] * factor)
        start += b.dim
    return out


def block_slices(blocks: Sequence[Block]) -> dict[str, slice]:
    out: dict[str, slice] = {}
    start = 0
    for b in blocks:
        out[b.name] = slice(start, start + b.dim)
        start += b.dim
    return out
