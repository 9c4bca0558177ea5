"""FeatureSpec: every parameter that changes a vector, in one place.

A spec is canonicalised (parameters a method does not use are dropped) so that
two specs that produce the same vectors hash the same, and two that do not, never.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from shared.errors import UsageError
from shared.hashing import canonical_json, sha256_json

# Bump when the feature code changes the vectors it produces for the same spec.
FEATURE_CODE_VERSION = 3  # 3: texture bins from the log magnitude, bilinear/fast-area resizing (issue #14)

CLASSIC_METHODS = ("canny", "spatial_pyramid", "hog", "spatial_color")
NEURAL_METHODS = ("mobilenet", "efficientnet")
ALL_METHODS = CLASSIC_METHODS + NEURAL_METHODS
POOLINGS = ("avg", "gem")


@dataclass(frozen=True)
class FeatureSpec:
    method: str = "canny"
    comparison_size: int = 256
    aspect_w: int = 16
    aspect_h: int = 9
    spatial_grid: int = 2
    pooling: str = "avg"
    gem_p: float = 3.0
    projection_seed: int = 0
    model_sha256: str = ""
    code_version: int = FEATURE_CODE_VERSION

    def __post_init__(self) -> None:
        if self.method not in ALL_METHODS:
            raise UsageError(f"unknown method {self.method!r}; choose one of {', '.join(ALL_METHODS)}")
        if not 32 <= self.comparison_size <= 2048:
            raise UsageError(f"comparison size must be within 32..2048, got {self.comparison_size}")
        if (
            self.aspect_w <= 0
            or self.aspect_h <= 0
            or max(self.aspect_w, self.aspect_h) > 100 * min(self.aspect_w, self.aspect_h)
        ):
            raise UsageError(f"aspect must be two positive numbers W:H, got {self.aspect_w}:{self.aspect_h}")
        if self.spatial_grid not in (2, 3):
            raise UsageError(f"spatial grid must be 2 or 3, got {self.spatial_grid}")
        if self.pooling not in POOLINGS:
            raise UsageError(f"pooling must be avg or gem, got {self.pooling!r}")
        if not (math.isfinite(self.gem_p) and 0.5 <= self.gem_p <= 16):
            raise UsageError(f"gem-p must be within 0.5..16, got {self.gem_p}")

    @property
    def aspect(self) -> float:
        return self.aspect_w / self.aspect_h

    @property
    def is_neural(self) -> bool:
        return self.method in NEURAL_METHODS

    def prepared_size(self) -> tuple[int, int]:
        """(width, height) every image and frame is cropped and resized to.

        The long side is ``comparison_size``; the short side follows the aspect,
        rounded to a multiple of 8 (>= 32) so that grid cells and HOG cells tile it.
        """
        long_side = self.comparison_size
        ratio = min(self.aspect_w, self.aspect_h) / max(self.aspect_w, self.aspect_h)
        short = max(32, round(long_side * ratio / 8) * 8)
        if self.aspect_w >= self.aspect_h:
            return long_side, short
        return short, long_side

    def canonical(self) -> FeatureSpec:
        """The spec with every parameter the method ignores reset to its default."""
        default = FeatureSpec()
        spec = self
        if self.method not in ("spatial_pyramid", *NEURAL_METHODS):
            spec = replace(spec, spatial_grid=default.spatial_grid)
        if not self.is_neural:
            spec = replace(spec, pooling=default.pooling, gem_p=default.gem_p, model_sha256="")
        elif self.pooling == "avg":
            spec = replace(spec, gem_p=default.gem_p)
        if self.method != "spatial_color":
            spec = replace(spec, projection_seed=default.projection_seed)
        return spec

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.canonical())

    def canonical_json(self) -> str:
        return canonical_json(self.to_dict())

    def sha256(self) -> str:
        return sha256_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"feature spec has unknown fields: {', '.join(sorted(unknown))}")
        return cls(**data).canonical()


def parse_aspect(text: str) -> tuple[int, int]:
    """Parse 'W:H' (e.g. '16:9') into two positive integers."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"aspect must look like W:H (e.g. 16:9), got {text!r}")
    w, h = int(parts[0]), int(parts[1])
    if w <= 0 or h <= 0:
        raise UsageError(f"aspect must be positive, got {text!r}")
    return w, h
