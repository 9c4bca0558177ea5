"""A small PNG of a report for the docs: ``python -m tests.report_screenshot OUT/report.html docs/report.png``.

The page is opened in headless Chromium (tests/browser.py) and the picture keeps the top of the
page (header, figures, the first contact-sheet rows) above the per-frame plots, scaled to 800 px
and reduced to a 256-colour palette so that it stays small enough to commit.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage

from shared.atomic import atomic_write_bytes
from tests.browser import find_chromium, open_page

WIDTH = 800
SHEET_ROWS_SHOWN = 560  # page pixels of the contact sheet kept below its heading


def screenshot(report: Path, dest: Path) -> int:
    """Write the docs picture of ``report`` to ``dest``; returns its size in bytes."""
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("Debian's chromium is needed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile, tempfile.TemporaryDirectory() as scratch:
        full = Path(scratch) / "full.png"
        with open_page(report, Path(profile), chromium) as (page, _log):
            page.screenshot(path=str(full), full_page=True)
            sheet, plots = page.locator("#sheet").bounding_box(), page.locator("#plots").bounding_box()
        pixels = cv2.imread(str(full))
    if pixels is None or sheet is None or plots is None:
        raise SystemExit(f"{report}: not a FluxFrame report (no contact sheet or plots)")
    top = pixels[: int(sheet["y"]) + SHEET_ROWS_SHOWN]
    plot = pixels[int(plots["y"]) - 10 : int(plots["y"] + plots["height"]) + 10]
    both = np.vstack([top, plot])
    small = cv2.resize(both, (WIDTH, round(both.shape[0] * WIDTH / both.shape[1])), interpolation=cv2.INTER_AREA)
    palette = PILImage.fromarray(np.ascontiguousarray(small[:, :, ::-1])).quantize(256)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    atomic_write_bytes(dest, buffer.getvalue())
    return len(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("report", type=Path)
    parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    print(f"{args.dest}: {screenshot(args.report, args.dest):,} bytes")


if __name__ == "__main__":
    main()
