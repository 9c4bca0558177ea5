"""Importing a module changes nothing but the modules loaded: no process-wide settings, no self-registration."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys
import faiss
before = faiss.cvar.distance_compute_blas_threshold
import shared.search
import shared.features.base
after_import = faiss.cvar.distance_compute_blas_threshold
loaded = sorted(m for m in ("shared.features.classic", "shared.features.neural") if m in sys.modules)
import numpy as np
from shared.search import FAISS_BLAS_THRESHOLD, Searcher
Searcher(np.eye(4, dtype=np.float32))
print(json.dumps({"before": before, "after_import": after_import, "loaded": loaded,
                  "after_searcher": faiss.cvar.distance_compute_blas_threshold, "wanted": FAISS_BLAS_THRESHOLD}))
"""


def test_imports_change_no_process_state_and_a_searcher_sets_the_blas_threshold() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert seen["after_import"] == seen["before"] != seen["wanted"]
    assert seen["loaded"] == []  # base lists no method: the registry does
    assert seen["after_searcher"] == seen["wanted"]


def test_registry_lists_every_method_once() -> None:
    from shared.features import classic, neural
    from shared.features.registry import all_methods

    names = [m.name for m in all_methods()]
    assert names == sorted({m.name for m in (*classic.METHODS, *neural.METHODS)})
    assert {"canny", "hog", "spatial_pyramid", "spatial_color", "efficientnet", "mobilenet"} <= set(names)
