"""The feature methods FluxFrame knows, by name: the one list, and the extractor a spec asks for.

The methods are listed here, not registered by their modules at import time, so importing
any feature module has no side effect and ``base`` (what every method is) imports no method.
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import UsageError
from shared.features import classic, neural
from shared.features.base import Extractor, MethodInfo
from shared.spec import FeatureSpec

_METHODS: dict[str, MethodInfo] = {info.name: info for info in (*classic.METHODS, *neural.METHODS)}


def method_info(name: str) -> MethodInfo:
    try:
        return _METHODS[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}") from None


def all_methods() -> list[MethodInfo]:
    return [_METHODS[name] for name in sorted(_METHODS)]


def create_extractor(spec: FeatureSpec, asset_dir: Path) -> Extractor:
    return method_info(spec.method).factory(spec, asset_dir)
