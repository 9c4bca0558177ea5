"""make bench's README section: a run of some groups refreshes their rows and keeps the others'."""

from __future__ import annotations

from tests.bench.report import LARGE_MARK, keep_other_groups, markdown_table, measured_groups

ORDER = ["build", "search", "render"]


def row(group: str, name: str, shown: str) -> dict[str, object]:
    return {
        "group": group,
        "name": name,
        "setting": "s",
        "shown": shown,
        "target": "",
        "status": "",
        "note": "",
        "value": 1,
    }


def section(rows: list[dict[str, object]]) -> str:
    return "\n".join(["Measured by `make bench` on a CPU.", "", markdown_table(rows)])


def test_rows_of_groups_not_run_are_kept_in_group_order_and_the_run_groups_replaced() -> None:
    previous = section([row("build", "canny img/s", "546"), row("search", "exact", "0.17"), row("render", "e2e", "39")])
    fresh = section([row("build", "canny img/s", "900"), row("build", "canny build / decode alone", "0.6")])
    merged = keep_other_groups(fresh, previous, {"build"}, ORDER, large=False).splitlines()
    body = [line for line in merged if line.startswith("| ") and not line.startswith("| Group")]
    assert [line.split("|")[1].strip() for line in body] == ["build", "build", "search", "render"]
    assert "546" not in "\n".join(merged) and "| 900 |" in body[0]
    assert merged[0].endswith("Rows of groups not measured in this run (render, search) are from earlier runs.")
    # Nothing to keep: the section is the run's own.
    assert keep_other_groups(fresh, previous, {"build", "search", "render"}, ORDER, large=False) == fresh


def test_a_group_not_run_keeps_its_published_rows_over_older_figures_in_the_results() -> None:
    """OUT/results.json's search group is a plain run; the README shows a --large run's extra rows."""
    published = section([row("search", "exact 20k", "0.17"), row("search", "exact 1M", "4.4"), row("tiles", "t", "21")])
    regenerated = section([row("search", "exact 20k", "0.19"), row("tiles", "t", "25"), row("render", "e2e", "39")])
    merged = keep_other_groups(regenerated, published, {"tiles"}, [*ORDER, "tiles"], large=False).splitlines()
    body = [line for line in merged if line.startswith("| ") and not line.startswith("| Group")]
    assert [(line.split("|")[2].strip(), line.split("|")[4].strip()) for line in body] == [
        ("exact 20k", "0.17"),
        ("exact 1M", "4.4"),
        ("e2e", "39"),  # a group the README did not show yet comes in
        ("t", "25"),
    ]


def test_a_plain_run_of_a_group_keeps_its_large_only_rows_and_a_large_run_replaces_them() -> None:
    big = {**row("search", "exact", "4.4"), "setting": "1M", "large_only": True}
    published = section([row("search", "exact", "0.17"), big, row("render", "e2e", "39")])
    assert f"| 1M{LARGE_MARK} |" in published  # the README shows which rows only --large makes
    plain = section([row("search", "exact", "0.19")])
    merged = keep_other_groups(plain, published, {"search"}, ORDER, large=False).splitlines()
    body = [line for line in merged if line.startswith("| ") and not line.startswith("| Group")]
    assert [line.split("|")[4].strip() for line in body] == ["0.19", "4.4", "39"]
    assert merged[0].endswith(f"Rows marked{LARGE_MARK} are from the last --large run.")
    # A --large run made every row of its group: the published large row is not kept beside it.
    large = section([row("search", "exact", "0.18"), {**big, "shown": "4.1"}])
    merged = keep_other_groups(large, published, {"search"}, ORDER, large=True).splitlines()
    body = [line for line in merged if line.startswith("| ") and not line.startswith("| Group")]
    assert [line.split("|")[4].strip() for line in body] == ["0.18", "4.1", "39"]


def test_a_group_that_skipped_or_failed_measured_nothing_and_keeps_its_published_rows() -> None:
    skipped = {**row("neural", "efficientnet img/s", ""), "setting": "skipped", "value": None}
    groups = {"search": {"rows": [row("search", "exact", "0.17")]}, "neural": {"rows": [skipped]}}
    assert measured_groups(groups, ["search", "neural", "render"]) == {"search"}
    published = section([row("neural", "efficientnet img/s", "142")])
    merged = keep_other_groups(section(groups["neural"]["rows"]), published, set(), ORDER, large=False)
    assert "| 142 |" in merged and "skipped" not in merged
