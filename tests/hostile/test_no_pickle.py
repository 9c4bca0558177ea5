"""Nothing is ever unpickled: a scan of every project .py file, by syntax tree (comments and text don't count).

Refused: importing pickle and its relatives; their load/loads; joblib.load; pandas
read_pickle; allow_pickle given as anything but a literal False (numpy's default is False);
torch.load without weights_only=True; a .pkl / .pickle file name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "fluxframe_index", "fluxframe_render", "tests")
PICKLE_MODULES = frozenset({"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal", "jsonpickle"})
PICKLE_SUFFIXES = (".pkl", ".pickle")


def _dotted(node: ast.AST) -> str:
    """'np.load' for np.load, 'torch.load' for torch.load, '' for anything not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def pickle_uses(source: str, filename: str = "<source>", *, check_strings: bool = True) -> list[str]:
    """Every pickle use in ``source``, as 'file:line: what'."""
    return [
        f"{filename}:{getattr(node, 'lineno', 0)}: {hit}"
        for node in ast.walk(ast.parse(source, filename))
        for hit in _node_hits(node, check_strings)
    ]


def _node_hits(node: ast.AST, check_strings: bool) -> list[str]:
    hits: list[str] = []
    if isinstance(node, ast.Import):
        hits += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
    elif isinstance(node, ast.ImportFrom) and node.module:
        top = node.module.split(".")[0]
        if top in PICKLE_MODULES:
            hits.append(f"from {node.module} import")
        if top == "joblib" and any(a.name in ("load", "dump") for a in node.names):
            hits.append("from joblib import load/dump")
    elif isinstance(node, ast.Call):
        name = _dotted(node.func)
        if _keyword_is(node, "allow_pickle", True):
            hits.append(f"{name or 'call'}(allow_pickle=True)")
        if name.split(".")[0] in PICKLE_MODULES:
            hits.append(f"{name}()")
        if name in ("joblib.load", "joblib.dump") or name.rsplit(".", 1)[-1] in ("read_pickle", "to_pickle"):
            hits.append(f"{name}()")
        # numpy >= 1.16.3 (we require 1.26) defaults to allow_pickle=False; anything but a literal False is refused.
        if any(k.arg == "allow_pickle" for k in node.keywords) and not _keyword_is(node, "allow_pickle", False):
            hits.append(f"{name or 'call'}(allow_pickle=<not a literal False>)")
        if name in ("np.load", "numpy.load", "torch.load") and any(k.arg is None for k in node.keywords):
            hits.append(f"{name}(**kwargs): its pickle setting cannot be checked")
        if name == "torch.load" and not _keyword_is(node, "weights_only", True):
            hits.append("torch.load() without weights_only=True")
    elif (
        check_strings
        and isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.lower().endswith(PICKLE_SUFFIXES)
    ):
        hits.append(f"file name {node.value!r}")
    return hits


def project_files() -> list[Path]:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} files under {ROOT}"
    return files


def test_no_project_file_unpickles_anything() -> None:
    this = Path(__file__).resolve()
    found = []
    for path in project_files():
        # This file names the suffixes it looks for; its own code is still checked.
        found += pickle_uses(path.read_text(), str(path.relative_to(ROOT)), check_strings=path != this)
    assert found == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import dill as d",
        "from cloudpickle import loads",
        "import shelve",
        "import marshal",
        "from joblib import load",
        "import joblib\njoblib.load('x')",
        "import pandas as pd\npd.read_pickle('x')",
        "import numpy as np\nnp.load('x.npy', allow_pickle=True)",
        "import numpy as np\nnp.load('x.npy', allow_pickle=trusted)",
        "import numpy\nnumpy.load('x.npy', mmap_mode='r', **{'allow_pickle': True})",
        "import torch\ntorch.load('w.pth')",
        "import torch\ntorch.load('w.pth', weights_only=False)",
        "path = 'cache/features.pkl'",
        "np.savez('x', allow_pickle=True)",
    ],
)
def test_the_scan_catches_each_kind_of_pickle_use(snippet: str) -> None:
    assert pickle_uses(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import numpy as np\nnp.load('x.npy', mmap_mode='r', allow_pickle=False)",
        "import numpy as np\nnp.load('x.npy')",
        "import torch\ntorch.load('w.pth', map_location='cpu', weights_only=True)",
        "from joblib import Parallel, delayed",
        "# import pickle  (a comment is not code)",
        "text = 'never import pickle'",
    ],
)
def test_the_scan_allows_the_safe_forms(snippet: str) -> None:
    assert pickle_uses(snippet) == []
