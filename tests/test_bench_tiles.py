"""The tile benchmark's large bundles (tests/bench/tile_synth.py) and make quality's document (look_report.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.bundle import open_bundle
from tests.bench.look_report import END, START, update_doc
from tests.bench.tile_synth import make_tile_bundle


def test_tile_bundle_is_the_real_rows_tiled(small_bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "tiled"
    made = make_tile_bundle(str(small_bundle), str(dest), n=30)
    source, tiled = open_bundle(small_bundle), open_bundle(dest)  # verified: every sha256 matches
    count = source.count
    assert made["reused"] is False and tiled.count == 30 and tiled.tile_spec() == source.tile_spec()
    ids = np.arange(30) % count
    assert np.array_equal(np.asarray(tiled.atlas), np.asarray(source.atlas)[ids])
    assert np.array_equal(np.asarray(tiled.vectors), np.asarray(source.vectors)[ids])
    assert [row["path"] for row in tiled.read_images_table().to_pylist()][count] == source.read_images_table()["path"][
        0
    ].as_py()
    real = np.asarray(source.tile_descriptors)
    copies = np.asarray(tiled.tile_descriptors)
    assert np.array_equal(copies[:count], real)
    # Later copies are near, not equal: about 1 ΔE of noise per dimension.
    noise = copies[count:] - real[ids[count:]]
    assert 0.5 < float(noise.std()) < 1.5
    assert make_tile_bundle(str(small_bundle), str(dest), n=30)["reused"] is True


def test_tile_bundle_with_ivf_carries_the_tile_index(small_bundle: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ivf"
    make_tile_bundle(str(small_bundle), str(dest), n=600, ivf=True)
    tiled = open_bundle(dest)
    assert tiled.tile_index_path is not None and tiled.tile_index_path.is_file()


def test_look_section_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    doc = tmp_path / "look.md"
    doc.write_text("# The look\n\nHow the defaults were chosen, by hand.\n")
    update_doc(doc, "first table")
    update_doc(doc, "second table")
    text = doc.read_text()
    assert text.startswith("# The look\n\nHow the defaults were chosen, by hand.\n")
    assert text.count(START) == 1 and f"{START}\nsecond table\n{END}" in text and "first table" not in text
