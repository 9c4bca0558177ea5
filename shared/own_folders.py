"""Recognise FluxFrame's own folders (bundles, render outputs), so that no tool feeds on its own output.

A pool scan skips them (an index of a render's frames, or of a bundle's files, is never what
the user meant), and a tool refuses to write its output inside the input it reads.
Recognition reads a few KB of one file and needs no import of either tool.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

__all__ = ["FolderKind", "fluxframe_folder_kind", "is_inside"]

FolderKind = Literal["bundle", "render output"]

# Enough for the head of a manifest or a checkpoint's header line; a real one is a few KB.
_HEAD_BYTES = 1 << 16
# Keys only FluxFrame writes together: a photo folder with some other manifest.json is not ours.
_BUNDLE_KEYS = frozenset({"format_version", "bundle_id", "spec", "spec_sha256"})


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(_HEAD_BYTES)
    except OSError:
        return b""


def _json_object(data: bytes) -> dict[str, object]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def fluxframe_folder_kind(folder: Path) -> FolderKind | None:
    """ "bundle" when ``folder`` holds a FluxFrame manifest, "render output" when it holds a
    render's checkpoint or results, else None."""
    if _json_object(_head(folder / "manifest.json")).keys() >= _BUNDLE_KEYS:
        return "bundle"
    header = _json_object(_head(folder / "checkpoint.jsonl").split(b"\n", 1)[0])
    if header.get("type") == "header" and "bundle_id" in header:
        return "render output"
    # results.json lists every frame (too long to parse whole here); its format tag comes early.
    if b'"fluxframe-render-results"' in _head(folder / "results.json"):
        return "render output"
    return None


def is_inside(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or lies under it, symlinks resolved (``path`` need not exist)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
