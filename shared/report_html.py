"""Building blocks of a self-contained HTML report: escaped text, inline pictures, tables, the page.

A report is one file a user can mail or open from anywhere: pictures are inline data URIs,
plots inline SVG, the style one <style> block, and there is no script and no URL to fetch.
Every string that comes from outside (file names, option values) goes through ``text``:
file names can hold ``<``, ``&`` or quotes, and bytes that are not UTF-8.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]

THUMB_JPEG_QUALITY = 82


def text(value: object) -> str:
    """``value`` as HTML text, quotes included, with undecodable file-name bytes shown as U+FFFD.

    A non-UTF-8 file name reaches Python as lone surrogates (surrogateescape); they cannot be
    written as UTF-8, so they are turned back into their bytes and decoded with replacement.
    """
    raw = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(raw, quote=True)


def resize_to_width(image: Image, width: int) -> Image:
    """``image`` scaled to ``width`` pixels wide (never enlarged), keeping its aspect."""
    height, current = image.shape[:2]
    if current <= width:
        return np.ascontiguousarray(image)
    size = (width, max(1, round(height * width / current)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def encode_jpeg(image: Image, quality: int = THUMB_JPEG_QUALITY) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} picture as JPEG")
    return bytes(data)


def encode_png(image: Image) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} picture as PNG")
    return bytes(data)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def img(data: bytes, mime: str, *, alt: str, css_class: str, size: tuple[int, int] | None = None) -> str:
    """An <img> of encoded picture bytes; ``size`` (width, height) lets the page lay out before decoding."""
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    return f'<img class="{text(css_class)}" src="{data_uri(data, mime)}" alt="{text(alt)}"{dims}>'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return text(f"{value:.4g}")
    if isinstance(value, bool) or value is None:
        return text("—" if value is None else ("yes" if value else "no"))
    if isinstance(value, (list, tuple)):
        return text(", ".join(str(v) for v in value))
    return text(value)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys, in the order given: {"a": {"b": 1}} -> [("a.b", 1)]."""
    rows: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows.extend(flatten(value, f"{name}.") or [(name, "")])
        else:
            rows.append((name, value))
    return rows


def key_value_table(mapping: Mapping[str, Any], *, css_class: str = "kv") -> str:
    rows = "".join(f"<tr><th>{text(k)}</th><td>{_cell(v)}</td></tr>" for k, v in flatten(mapping))
    return f'<table class="{text(css_class)}"><tbody>{rows or "<tr><td>none</td></tr>"}</tbody></table>'


def table(header: Sequence[str], rows: Iterable[Sequence[str]], *, css_class: str = "grid") -> str:
    """A table whose cells are already HTML (callers escape what they put in)."""
    head = "".join(f"<th>{text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{text(css_class)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def figure_cards(figures: Sequence[tuple[str, str]]) -> str:
    """Big numbers with a caption: (label, value) pairs, both plain text."""
    cards = "".join(
        f'<div class="card"><div class="value">{text(value)}</div><div class="label">{text(label)}</div></div>'
        for label, value in figures
    )
    return f'<div class="cards">{cards}</div>'


def section(anchor: str, title: str, body: str, *, note: str = "") -> str:
    lead = f'<p class="note">{text(note)}</p>' if note else ""
    return f'<section id="{text(anchor)}"><h2>{text(title)}</h2>{lead}{body}</section>'


STYLE = """
:root { --ink: #1f2328; --muted: #5b636d; --line: #dde1e6; --paper: #ffffff; --wash: #f4f6f8;
        --accent: #3d5a80; --held: #f6c27a; --cut: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--wash); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
header { background: var(--ink); color: #fff; padding: 22px 32px 16px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 650; overflow-wrap: anywhere; }
header p { margin: 0; color: #c9d1d9; font-size: 13px; }
nav { margin-top: 12px; display: flex; flex-wrap: wrap; gap: 6px 16px; font-size: 13px; }
nav a { color: #e6edf3; text-decoration: none; border-bottom: 1px solid #6e7781; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 24px 48px; }
section { background: var(--paper); border: 1px solid var(--line); border-radius: 10px;
          padding: 18px 22px 20px; margin-top: 20px; }
h2 { margin: 0 0 10px; font-size: 18px; font-weight: 650; }
.note { margin: -4px 0 12px; color: var(--muted); font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.card { background: var(--wash); border-radius: 8px; padding: 10px 14px; }
.card .value { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .label { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
td { font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
table.kv th { width: 34%; color: var(--muted); font-weight: 500; }
table.grid thead th { color: var(--muted); font-weight: 600; border-bottom: 2px solid var(--line); }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 20px; }
.columns h3 { margin: 0 0 6px; font-size: 14px; color: var(--muted); font-weight: 600; }
.plot { width: 100%; height: auto; display: block; }
.sheet { display: grid; grid-template-columns: 170px repeat(var(--pictures), minmax(0, 240px)); gap: 10px 12px;
         align-items: center; }
.sheet .thumb { aspect-ratio: var(--thumb-aspect); object-fit: contain; }
.sheet .head { color: var(--muted); font-size: 12px; font-weight: 600; text-transform: uppercase;
               letter-spacing: .04em; }
.sheet .meta { font-size: 12px; color: var(--muted); line-height: 1.35; overflow-wrap: anywhere; }
.sheet .meta b { color: var(--ink); font-size: 13px; }
.sheet .name { color: var(--ink); }
.thumb { width: 100%; height: auto; display: block; border-radius: 4px; background: var(--wash); }
.tag { display: inline-block; margin: 2px 4px 0 0; padding: 0 6px; border-radius: 9px; font-size: 11px;
       color: #fff; background: var(--accent); }
.tag.held { background: #b7791f; }
.tag.cut { background: var(--cut); }
table.grid td:last-child { width: 30%; }
.bar { height: 8px; background: var(--accent); border-radius: 4px; min-width: 2px; }
.zoom { max-width: 100%; width: 720px; height: auto; image-rendering: pixelated; border-radius: 4px; display: block; }
footer { color: var(--muted); font-size: 12px; text-align: center; margin-top: 24px; }
"""


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]], footer: str = "") -> str:
    """The whole document. ``sections`` are (anchor, title, html) in order; the nav links to them."""
    nav = "".join(f'<a href="#{text(anchor)}">{text(name)}</a>' for anchor, name, _ in sections)
    body = "".join(html_body for _, _, html_body in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No request may leave the file: not even a favicon lookup.
        '<link rel="icon" href="data:,">'
        f"<title>{text(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{text(title)}</h1><p>{text(subtitle)}</p><nav>{nav}</nav></header>"
        f"<main>{body}<footer>{text(footer)}</footer></main></body></html>\n"
    )
