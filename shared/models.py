"""The model cache: where exported ONNX files live and how one is found again.

A model file is named ``<method>-<first 8 hex of its sha256>.onnx`` and has a JSON
sidecar (``.json``) saying where it came from. A bundle's spec records the full
sha256, so a model is always looked up by content, never by name alone.

Cache folder: the ``cache_dir`` argument, else $FLUXFRAME_CACHE, else ~/.cache/fluxframe.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from shared.atomic import atomic_write_bytes, atomic_write_json
from shared.errors import OutputError
from shared.hashing import sha256_file

ENV_CACHE = "FLUXFRAME_CACHE"
MODEL_SUFFIX = ".onnx"
SIDECAR_SUFFIX = ".json"


def cache_dir(override: Path | None = None) -> Path:
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(ENV_CACHE, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "fluxframe"


def export_command(method: str) -> str:
    """The one command that makes a neural method ready."""
    if method == "mobilenet":
        return "ff-index export-model mobilenet --weights MOBILENET_V3_SMALL.pth"
    return f"ff-index export-model {method}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_filename(method: str, sha256: str) -> str:
    return f"{method}-{sha256[:8]}{MODEL_SUFFIX}"


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_suffix(SIDECAR_SUFFIX)


def cached_models(method: str, cache: Path) -> list[Path]:
    """The cached models of a method, most recently written first."""
    if not cache.is_dir():
        return []
    found = [
        p
        for p in cache.glob(f"{method}-*{MODEL_SUFFIX}")
        if p.is_file() and _is_hex8(p.name[len(method) + 1 : -len(MODEL_SUFFIX)])
    ]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def find_model(method: str, sha256: str, cache: Path) -> Path | None:
    """The cached model of this method whose content has exactly this sha256, if any."""
    if len(sha256) != 64:
        return None
    path = cache / model_filename(method, sha256)
    if path.is_file() and sha256_file(path) == sha256:
        return path
    return None


def read_sidecar(model_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(sidecar_path(model_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store_model(method: str, data: bytes, cache: Path, info: dict[str, Any]) -> Path:
    """Put a model's bytes into the cache under its content name, with a sidecar; return its path."""
    sha = sha256_bytes(data)
    path = cache / model_filename(method, sha)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the model cache {cache}: {e.strerror or e}") from e
    atomic_write_bytes(path, data)
    atomic_write_json(sidecar_path(path), {"method": method, "sha256": sha, "bytes": len(data), **info})
    return path


def _is_hex8(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)
