"""Two writers of one bundle path: the second ff-index refuses instead of sharing the staging folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fluxframe_index.build import bundle_lock
from shared.errors import EXIT_STATE
from tests.pools import make_pool


def test_a_second_build_into_the_same_bundle_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, 4, seed=3, max_side=400)
    bundle = tmp_path / "bundle"
    ff_index = Path(sys.executable).parent / "ff-index"
    with bundle_lock(bundle):  # stands for a build that is running
        busy = subprocess.run(
            [str(ff_index), "build", str(pool), str(bundle), "--quiet", "--jobs", "1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert busy.returncode == EXIT_STATE
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by ff-index pid" in lines[0], busy.stderr
    assert not bundle.exists()
    done = subprocess.run(
        [str(ff_index), "build", str(pool), str(bundle), "--quiet", "--jobs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (bundle / "manifest.json").is_file()
