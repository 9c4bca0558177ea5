"""The benchmark's outputs: a printed table, bench-out/results.json, the README's bench section."""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path
from typing import Any

import psutil

from shared.atomic import atomic_write_bytes

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
COLUMNS = ("Group", "Measurement", "Setting", "Result", "Target", "Status", "Notes")


def machine() -> dict[str, Any]:
    import cv2
    import faiss
    import numpy

    from shared.images import simplejpeg_available

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": psutil.cpu_count(logical=True),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "faiss": faiss.__version__,
        "opencv": cv2.__version__,
        "simplejpeg": simplejpeg_available(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# Ends the setting of a row only --large measures (500k/1M pools): a plain run of its group
# keeps it as published instead of dropping it (keep_other_groups).
LARGE_MARK = " [--large]"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        cells = (
            r["group"],
            r["name"],
            r["setting"] + (LARGE_MARK if r.get("large_only") else ""),
            r["shown"],
            r["target"],
            r["status"],
            r["note"] if r["value"] is not None else "",
        )
        lines.append("| " + " | ".join(_cell(str(c)) for c in cells) + " |")
    return "\n".join(lines)


def text_table(rows: list[dict[str, Any]]) -> str:
    cols = ("group", "name", "setting", "shown", "target", "status")
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols} if rows else {c: len(c) for c in cols}
    head = "  ".join(c.upper().ljust(widths[c]) for c in cols)
    body = ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join([head, "-" * len(head), *body])


def _most_disturbed(group: dict[str, Any]) -> float:
    """The largest share of the CPUs (percent) other work took during any figure of the group."""
    found: list[float] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "other_cpu_during_pct" and isinstance(value, int | float):
                    found.append(float(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(group.get("details", {}))
    walk(group.get("large_details", {}))
    return max(found, default=0.0)


def readme_section(results: dict[str, Any]) -> str:
    m = results["machine"]
    groups = results["groups"]
    busy = ", ".join(f"{name} {_most_disturbed(g):.0f}%" for name, g in groups.items())
    rows = [r for g in groups.values() for r in g["rows"]]
    how = "`make bench-large`" if results.get("large") else "`make bench`"
    if results.get("quick"):
        how += " with `--quick` (small sizes: a check that the suite runs, not figures to quote)"
    return "\n".join(
        [
            f"Measured by {how} on {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, {m['date']}; "
            f"Python {m['python']}, FAISS {m['faiss']}, OpenCV {m['opencv']}, "
            f"simplejpeg {'yes' if m.get('simplejpeg') else 'no'}. Largest share of the CPUs other work took "
            f"during a measurement: {busy}. Raw figures: `{results.get('out', 'bench-out')}/results.json`.",
            "",
            markdown_table(rows),
        ]
    )


def limits_section(results: dict[str, Any], names: tuple[str, ...], group: str, repeated: str) -> str:
    """The rows that set a phase beside its limit in one run (ratios: they hold even on a quick run);
    ``repeated`` says how many alternating pairs each ratio took."""
    m = results["machine"]
    rows = [r for g in results["groups"].values() for r in g["rows"] if r["name"] in names]
    quick = results["groups"].get(group, {}).get("quick", results.get("quick"))  # the group's own run
    how = f"`python -m tests.bench.run --only {group}" + (" --quick`" if quick else "`")
    return "\n".join(
        [
            f"Measured by {how} on {m['cpu']}, {m['cores']} cores, {m['date']}; each ratio from one run, "
            f"the phase and its limit measured alternately {repeated} and the fastest of each kept.",
            "",
            markdown_table(rows),
        ]
    )


def measured_groups(groups: dict[str, Any], names: list[str]) -> set[str]:
    """Those of ``names`` whose rows hold at least one figure: a group that skipped (no exported
    model) or failed measured nothing, and its published rows stay (keep_other_groups)."""
    return {name for name in names if any(r["value"] is not None for r in groups.get(name, {}).get("rows", []))}


def keep_other_groups(section: str, previous: str, measured: set[str], order: list[str], *, large: bool) -> str:
    """``section``'s rows of the ``measured`` groups plus the rows of ``previous`` (the README's
    current bench section) of every other group, in ``order``: a run of some groups refreshes
    their rows and leaves the others' as published. (OUT/results.json may hold an older or
    smaller run of a group than the README shows: a plain run after a --large one, a fresh
    --out folder.) A group the README does not show yet comes from ``section``. A run that is
    not ``large`` also keeps the README's LARGE_MARK rows of its groups that it did not make."""
    published = [line for line in previous.splitlines() if _row_group(line) is not None]
    shown = {_row_group(line) for line in published}
    lines = section.splitlines()
    rows = [line for line in lines if _row_group(line) in measured or _row_group(line) not in (None, *shown)]
    made = {_row_key(line) for line in rows}
    kept = [line for line in published if _row_group(line) not in measured]
    large_kept = [
        line
        for line in published
        if not large
        and _row_group(line) in measured
        and _row_key(line) not in made
        and _row_key(line)[2].endswith(LARGE_MARK.strip())
    ]
    rank = {name: i for i, name in enumerate(order)}
    merged = sorted(rows + kept + large_kept, key=lambda line: rank.get(_row_group(line) or "", len(order)))
    head = [line for line in lines if _row_group(line) is None]
    notes = []
    if kept:
        names = ", ".join(sorted({_row_group(line) or "" for line in kept}))
        notes.append(f"Rows of groups not measured in this run ({names}) are from earlier runs.")
    if not large and any(_row_key(line)[2].endswith(LARGE_MARK.strip()) for line in merged):
        # Kept from the README here, or from OUT/results.json by run.py: either way an earlier run's.
        notes.append(f"Rows marked{LARGE_MARK} are from the last --large run.")
    head[0] += "".join(" " + note for note in notes)
    return "\n".join(head + merged)


def _row_key(line: str) -> tuple[str, str, str]:
    """(group, measurement, setting) of a bench table row."""
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return cells[0], cells[1], cells[2]


def _row_group(line: str) -> str | None:
    """The group of a bench table row; None for any other line (text, the table's head)."""
    cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
    return cells[0] if cells and cells[0] not in (COLUMNS[0], "") and not set(cells[0]) <= {"-"} else None


def current_section(readme: Path, name: str | None = None) -> str:
    """What lies between the markers of the README's section (empty when there is none)."""
    start, end = markers(name)
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    if start not in text or end not in text:
        return ""
    return text[text.index(start) + len(start) : text.index(end)]


def markers(name: str | None = None) -> tuple[str, str]:
    """The bench section's markers, or those of the section called ``name``."""
    return (START, END) if name is None else (f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->")


def update_readme(readme: Path, section: str, name: str | None = None) -> bool:
    """Replace what lies between the bench markers (a missing README is created with just them).

    The rest of the README is not the benchmark's: without both markers, in order, the
    file is left alone and False is returned.
    """
    start, end = markers(name)
    text = readme.read_text(encoding="utf-8") if readme.exists() else f"{start}\n{end}\n"
    if start not in text or end not in text or text.index(start) > text.index(end):
        return False
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    replaced = pattern.sub(lambda _m: f"{start}\n{section}\n{end}", text, count=1)
    atomic_write_bytes(readme, replaced.encode("utf-8"))
    return True
