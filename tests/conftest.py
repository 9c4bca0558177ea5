"""Shared fixtures: real-content pools and a bundle built from one, made once per test session.

Fixtures hand out paths that many tests read: a test that modifies a pool or a
bundle copies it first (``pools.copy_tree``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fluxframe_index.build import BuildOptions, build_bundle
from shared.bundle import Bundle, open_bundle
from shared.spec import FeatureSpec
from tests.pools import make_pool

SMALL_POOL_SIZE = 12


@pytest.fixture(scope="session")
def small_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 distinct real-content JPEGs (320..1280 px) spread over nested folders. Read-only."""
    root = tmp_path_factory.mktemp("small-pool")
    make_pool(root, SMALL_POOL_SIZE, seed=7, nested=True)
    return root


@pytest.fixture(scope="session")
def small_bundle(small_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A spatial_color bundle of ``small_pool`` (it has an asset file, projection.npy). Read-only."""
    dest = tmp_path_factory.mktemp("small-bundle") / "bundle"
    build_bundle(small_pool, dest, BuildOptions(spec=FeatureSpec(method="spatial_color"), jobs=1, chunk_size=5))
    return dest


@pytest.fixture(scope="session")
def opened_small_bundle(small_bundle: Path) -> Bundle:
    return open_bundle(small_bundle)
