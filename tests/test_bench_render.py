"""The render benchmark's end-to-end ceiling row (tests/bench/render_bench.py): its arithmetic and its note."""

from __future__ import annotations

from typing import Any

import psutil

from tests.bench.render_bench import E2E_CEILING_ROW, E2E_VS_ENCODE, _ceiling_row


def _render(cpu_s: float) -> dict[str, Any]:
    stages = {"colour": {"busy_s": 7.0}, "quality": {"busy_s": 3.0}, "decode": {"busy_s": 2.0}}
    return {"render_cpu_s": cpu_s, "timings": {"output": {"stages": stages}, "match": {"seconds": 2.5}}}


def test_a_render_using_every_core_for_the_encoders_time_reaches_the_ceiling_of_one() -> None:
    cores = psutil.cpu_count() or 1
    encoded = {"seconds": 8.0, "encode_cpu_s": 6.0 * cores / 4}
    row = _ceiling_row("clip", _render(8.0 * cores), encoded, 3.5)
    assert row.name == E2E_CEILING_ROW and row.target == "" and row.met is None
    assert row.value is not None and abs(row.value - 1.0) < 1e-9
    # Half the CPU: twice the speed the encoder alone reaches, at best.
    half = _ceiling_row("clip", _render(4.0 * cores), encoded, None).value
    assert half is not None and abs(half - 2.0) < 1e-9


def test_the_note_sets_the_cpu_the_target_leaves_beside_the_encoder_against_what_the_render_spent() -> None:
    cores = psutil.cpu_count() or 1
    encoded = {"seconds": 9.0, "encode_cpu_s": 12.0}
    note = _ceiling_row("clip", _render(30.0), encoded, 3.3).note
    allowed = cores * 9.0 / E2E_VS_ENCODE
    assert f"has {allowed:.1f} CPU s, {allowed - 12.0:.1f} beside libx264's, and spent 18.0 on the rest" in note
    assert "colour 7.0, quality 3.0, output decode 2.0, match phase 2.5 s" in note
    assert note.endswith("decoding the clip alone, without converting a frame, costs 3.3 CPU s")
    assert "decoding the clip alone" not in _ceiling_row("clip", _render(30.0), encoded, None).note
