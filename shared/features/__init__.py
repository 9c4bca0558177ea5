"""Feature extraction: one module per method family, one registry (see base.py)."""

from shared.features.base import (
    Block,
    Extractor,
    MethodInfo,
    all_methods,
    create_extractor,
    finish_blocks,
    method_info,
    weight_query,
)

__all__ = [
    "Block",
    "Extractor",
    "MethodInfo",
    "all_methods",
    "create_extractor",
    "finish_blocks",
    "method_info",
    "weight_query",
]
