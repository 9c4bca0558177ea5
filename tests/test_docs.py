"""Every --option the README and docs/cli.md name exists in the --help of the tool they name it for.

The options are read from the installed tools' --help at run time (ff-index and each of its
commands, ff-render), never from a list kept here: an option added to a tool is known the
moment it is in its --help, and one that is renamed or removed fails this test until the
docs follow.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKED_DOCS = (ROOT / "README.md", ROOT / "docs" / "cli.md")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
# A command as the docs write it: "ff-render ..." or "ff-index build ...".
COMMAND = re.compile(r"(?<![\w-])(ff-render|ff-index)(?:\s+([a-z][a-z-]*))?")
ANY = "any FluxFrame command"


def _help(*argv: str) -> str:
    script = Path(sys.executable).parent / argv[0]
    result = subprocess.run([str(script), *argv[1:], "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (argv, result.stderr)
    return result.stdout


def _subcommands(group_help: str) -> list[str]:
    listing = group_help.split("Commands:", 1)[1]
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ") and line.split()]


@pytest.fixture(scope="module")
def help_options() -> dict[str, set[str]]:
    """Options by command ("ff-render", "ff-index build", ...) from the installed scripts' --help."""
    helps = {"ff-index": _help("ff-index")}
    commands = [("ff-render",), *(("ff-index", sub) for sub in _subcommands(helps["ff-index"]))]
    # Each --help is a process start of a second or so: run them side by side.
    with ThreadPoolExecutor(max_workers=2) as pool:
        helps |= dict(zip((" ".join(c) for c in commands), pool.map(lambda c: _help(*c), commands), strict=True))
    options = {command: set(OPTION.findall(text)) for command, text in helps.items()}
    options["ff-index"] |= set().union(*(v for k, v in options.items() if k.startswith("ff-index ")))
    options[ANY] = set().union(*options.values())
    return options


@dataclass(frozen=True)
class Mention:
    doc: str
    line: int
    option: str
    command: str  # the --help it must be in


def _section_tool(heading: str) -> str:
    for tool in ("ff-index", "ff-render"):
        if tool in heading:
            return tool
    return ANY


def mentions(name: str, text: str, commands: Mapping[str, set[str]]) -> Iterator[Mention]:
    """Each --option in ``text`` with the command it belongs to.

    An option after a command on the same line ("ff-index build ... --method x") belongs to that
    command; others belong to the tool whose section ("## ff-render") they are in, or to any
    FluxFrame command. Code lines of other programs (pip, dask, ...) and shell comments are not
    FluxFrame's.
    """
    tool = ANY
    in_code = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        if not in_code and line.startswith("#"):
            tool = _section_tool(line)
            continue
        if in_code:
            line = line.split(" #", 1)[0]  # a shell comment names other programs' options
        found = list(COMMAND.finditer(line))
        if in_code and not found and not line.lstrip().startswith("make "):
            continue
        for match in OPTION.finditer(line):
            before = [c for c in found if c.end() <= match.start()]
            command = tool
            if before:
                program, word = before[-1].group(1), before[-1].group(2)
                command = f"{program} {word}" if f"{program} {word}" in commands else program
            yield Mention(name, number, match.group(), command)


def missing_options(name: str, text: str, commands: Mapping[str, set[str]]) -> list[Mention]:
    return [m for m in mentions(name, text, commands) if m.option not in commands[m.command]]


@pytest.mark.slow
def test_every_option_the_docs_name_is_in_the_tools_help(help_options: dict[str, set[str]]) -> None:
    checked = 0
    missing: list[Mention] = []
    for doc in CHECKED_DOCS:
        text = doc.read_text(encoding="utf-8")
        checked += sum(1 for _ in mentions(doc.name, text, help_options))
        missing += missing_options(doc.name, text, help_options)
    assert checked > 40, f"only {checked} option mentions found: is the parser still reading the docs?"
    assert not missing, "\n".join(f"{m.doc}:{m.line}: {m.option} is not in `{m.command} --help`" for m in missing)


@pytest.mark.slow
def test_an_option_named_for_the_wrong_command_is_caught(help_options: dict[str, set[str]]) -> None:
    doc = """
## ff-render

| `--no-repeat` | | fine |
| `--no-such-option` | | not an option of any tool |

```bash
ff-index build POOL BUNDLE --method canny --no-repeat
pip install --upgrade pip   # --upgrade: pip's own
make lint                   # ruff format --check
```

`ff-index info BUNDLE --json` and `ff-index verify BUNDLE --json`
"""
    found = {(m.option, m.command) for m in missing_options("doc.md", doc, help_options)}
    assert found == {
        ("--no-such-option", "ff-render"),
        ("--no-repeat", "ff-index build"),  # a render option given to the build
        ("--json", "ff-index verify"),
    }


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    words = re.sub(r"[^\w\- ]", "", heading.strip("# ").lower())
    return words.replace(" ", "-")


def test_links_between_the_docs_lead_to_a_file_and_heading() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = [line for line in file.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_cli_reference_is_the_current_help() -> None:
    """docs/cli.md's option block is `--help` itself: rerun `python -m tests.cli_reference` after changing options."""
    from tests.cli_reference import CLI_DOC, current_block, reference

    assert current_block(CLI_DOC.read_text()) == reference()
