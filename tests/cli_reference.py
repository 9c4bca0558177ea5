"""The `--help` text of every command, pasted into docs/cli.md between markers, so the reference cannot drift.

``python -m tests.cli_reference`` rewrites the block; tests/test_docs.py checks it is current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from fluxframe_index.cli import main as ff_index
from fluxframe_render.cli import main as ff_render
from shared.atomic import atomic_write_bytes

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
BEGIN, END = "<!-- help:begin (python -m tests.cli_reference) -->", "<!-- help:end -->"
WIDTH = 100


def _help(command: click.Command, args: list[str], prog: str) -> str:
    result = CliRunner().invoke(command, [*args, "--help"], prog_name=prog, terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.output.rstrip() + "\n"


def reference() -> str:
    """The generated block: each command's --help in a code block."""
    parts = []
    for title, command, args, prog in (
        ("ff-render", ff_render, [], "ff-render"),
        ("ff-index build", ff_index, ["build"], "ff-index"),
        ("ff-index compare", ff_index, ["compare"], "ff-index"),
    ):
        parts.append(f"### `{title} --help`\n\n```\n{_help(command, args, prog)}```\n")
    return "\n".join(parts)


def current_block(text: str) -> str:
    match = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.S)
    assert match is not None, f"{CLI_DOC} has no {BEGIN} ... {END} block"
    return match.group(1)


def main() -> int:
    text = CLI_DOC.read_text()
    current_block(text)  # the markers must be there
    start, end = text.index(BEGIN) + len(BEGIN) + 1, text.index(END)
    updated = text[:start] + reference() + text[end:]
    atomic_write_bytes(CLI_DOC, updated.encode())
    print(f"updated {CLI_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
