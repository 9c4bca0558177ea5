"""Command lines: every option refuses bad values in one line; no expected error shows a traceback.

Options are enumerated from the click commands themselves, so an option added later is
covered (or this test says it has no bad-value case yet). Bad values are derived from each
option's type: out-of-range numbers, nan and inf, words for numbers, unknown choices,
a folder where a file is wanted and the reverse. Then real processes check exit codes
(shared/errors.py) and that only --debug shows a traceback.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from fluxframe_index.cli import main as ff_index
from fluxframe_render.cli import main as ff_render
from shared import errors
from tests.hostile.bundles import write_small_pool
from tests.hostile.procs import FAST_INDEX_ARGS, assert_clean_failure, child_env, error_lines, run, run_all, tool
from tests.media import make_test_video, skimage_images

# Free-text options have no type to derive a bad value from: each gets its own.
TEXT_CASES: dict[str, list[str]] = {
    "--aspect": ["16x9", "0:9", "16:-9", "1:1000", "", "a:b"],
    "--scheduler": ["tcp://127.0.0.1:1"],  # only valid with --backend dask
    "--color-grid": ["16", "0x9", "axb", "", "300x2"],
    "--tiles": ["32", "0x18", "32x", "x18", "32x18x2"],
    "--methods": ["nosuch", "canny,nosuch", ",", ""],
}
# Path options whose value is checked by the command itself (a plain file or folder is fine).
PATH_CASES: dict[str, list[str]] = {"--onnx-model": ["{file}"]}  # --onnx-model is for neural methods only


def _commands() -> list[tuple[str, click.Command, list[str]]]:
    """(program, command, arguments that make a complete call) for every command."""
    assert isinstance(ff_index, click.Group)
    arguments = {
        "build": ["{pool}", "{tmp}/bundle"],
        "info": ["{tmp}/bundle"],
        "verify": ["{tmp}/bundle"],
        "methods": [],
        "merge": ["{tmp}/a", "{tmp}/b", "{tmp}/out"],
        "export-model": ["efficientnet"],
        "compare": ["{file}", "{pool}"],
    }
    out = [(f"ff-index {name}", command, arguments[name]) for name, command in sorted(ff_index.commands.items())]
    out.append(("ff-render", ff_render, ["{file}", "{tmp}/bundle", "{tmp}/out"]))
    return out


def bad_values(option: click.Option) -> list[str]:
    name = option.opts[0]
    kind = option.type
    values: list[str] = []
    if isinstance(kind, click.Choice):
        values.append("no-such-choice")
    if isinstance(kind, click.IntRange | click.FloatRange):
        step = 1 if isinstance(kind, click.IntRange) else 0.001
        if kind.min is not None:
            values.append(str(kind.min) if kind.min_open else str(kind.min - step))
        if kind.max is not None:
            values.append(str(kind.max) if kind.max_open else str(kind.max + step))
    if isinstance(kind, click.types.IntParamType):
        values += ["ten", "1.5"]
    if isinstance(kind, click.types.FloatParamType):
        values += ["ten", "nan", "inf", "-inf"]
    if isinstance(kind, click.Path):
        values += PATH_CASES.get(name, [])
        if not kind.dir_okay:
            values.append("{tmp}")
        if not kind.file_okay:
            values.append("{file}")
    if kind is click.STRING:
        assert name in TEXT_CASES, f"{name} takes free text: add its bad values to TEXT_CASES"
        values += TEXT_CASES[name]
    return values


def _option_cases() -> list[tuple[str, list[str], str, str]]:
    cases = []
    for prog, command, arguments in _commands():
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag or param.name in ("help", "version"):
                continue
            for value in bad_values(param):
                cases.append((prog, arguments, param.opts[0], value))
    return cases


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("cli")
    write_small_pool(tmp / "pool", 4)
    (tmp / "file.txt").write_text("a file\n")
    clip = make_test_video(tmp / "clip.mp4", skimage_images()[:1], fps=5, audio=False, motion=False)
    return {"tmp": str(tmp), "pool": str(tmp / "pool"), "file": str(tmp / "file.txt"), "clip": str(clip)}


def _invoke(prog: str, args: list[str]) -> tuple[int, str, BaseException | None]:
    runner = CliRunner()
    words = prog.split()
    command = ff_index if words[0] == "ff-index" else ff_render
    result = runner.invoke(command, [*words[1:], *args], catch_exceptions=True)
    unexpected = None if isinstance(result.exception, SystemExit | None) else result.exception
    return result.exit_code, result.stderr + result.stdout, unexpected


def one_error_line(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:") or ": error: " in line]


@pytest.mark.parametrize(
    ("prog", "arguments", "option", "value"),
    _option_cases(),
    ids=[f"{p}|{o}={v}" for p, _, o, v in _option_cases()],
)
def test_every_option_refuses_a_bad_value_in_one_line(
    places: dict[str, str], prog: str, arguments: list[str], option: str, value: str
) -> None:
    args = [a.format(**places) for a in arguments] + [option, value.format(**places)]
    code, output, unexpected = _invoke(prog, args)
    assert unexpected is None, f"{prog} {option}={value!r} raised {unexpected!r}"
    assert code == errors.EXIT_USAGE, f"{prog} {option}={value!r}: exit {code}\n{output}"
    assert "Traceback" not in output
    assert len(one_error_line(output)) == 1, output


def test_arguments_of_the_wrong_kind_are_refused(places: dict[str, str]) -> None:
    tmp, file = places["tmp"], places["file"]
    for args in ([tmp, f"{tmp}/bundle", f"{tmp}/out"], [file, f"{tmp}/bundle", file]):  # VIDEO a folder; OUT a file
        code, output, unexpected = _invoke("ff-render", args)
        assert unexpected is None and code == errors.EXIT_USAGE and len(one_error_line(output)) == 1, output


def test_the_exit_codes_are_documented_in_the_help() -> None:
    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_") and value != errors.EXIT_OK}
    for prog, command in (("ff-index", ff_index), ("ff-render", ff_render)):
        text = " ".join(CliRunner().invoke(command, ["--help"]).output.split())
        for code in codes:
            assert f" {code} " in text, f"{prog} --help does not document exit code {code}"


@pytest.mark.slow
def test_expected_errors_exit_with_their_code_and_no_traceback(places: dict[str, str], tmp_path: Path) -> None:
    pool, file, clip = places["pool"], places["file"], places["clip"]
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-a-video.mp4").write_text("not a video\n")
    bundle = tmp_path / "bundle"
    assert run("ff-index", ["build", pool, bundle, *FAST_INDEX_ARGS]).returncode == 0
    cases: list[tuple[str, list[str | os.PathLike[str]], int, str]] = [
        ("ff-index", ["build", tmp_path / "missing", tmp_path / "b"], errors.EXIT_INPUT, "does not exist"),
        ("ff-index", ["build", file, tmp_path / "b"], errors.EXIT_INPUT, "not a folder"),
        ("ff-index", ["build", tmp_path / "empty", tmp_path / "b"], errors.EXIT_INPUT, "no image files"),
        ("ff-index", ["build", pool, file], errors.EXIT_USAGE, "not a folder"),
        ("ff-index", ["build", pool, tmp_path / "b", "--jobs", "0"], errors.EXIT_USAGE, "--jobs"),
        (
            "ff-index",
            ["build", pool, tmp_path / "b", "--method", "mobilenet", "--cache-dir", tmp_path / "empty"],
            errors.EXIT_MODEL,
            "run:",
        ),
        ("ff-index", ["verify", tmp_path / "empty"], errors.EXIT_BUNDLE, "not a FluxFrame bundle"),
        ("ff-index", ["info", tmp_path / "missing"], errors.EXIT_BUNDLE, "no such bundle"),
        ("ff-render", [tmp_path / "missing.mp4", bundle, tmp_path / "out1"], errors.EXIT_INPUT, "missing.mp4"),
        ("ff-render", [tmp_path / "not-a-video.mp4", bundle, tmp_path / "out2"], errors.EXIT_INPUT, "not-a-video"),
        ("ff-render", [clip, tmp_path / "missing", tmp_path / "out3"], errors.EXIT_BUNDLE, "no such bundle"),
        ("ff-render", [clip, pool, tmp_path / "out4"], errors.EXIT_BUNDLE, "not a FluxFrame bundle"),
        ("ff-render", [clip, bundle, tmp_path / "out5", "--crf", "99"], errors.EXIT_USAGE, "--crf"),
    ]
    results = run_all([(name, args) for name, args, _, _ in cases])
    for (_, _, code, needle), result in zip(cases, results, strict=True):
        assert_clean_failure(result, code, needle)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    plain, debug = run_all(
        [
            ("ff-index", ["build", tmp_path / "missing", tmp_path / "b"]),
            ("ff-index", ["build", tmp_path / "missing", tmp_path / "b", "--debug"]),
        ]
    )
    assert_clean_failure(plain, errors.EXIT_INPUT, "does not exist")
    assert debug.returncode == errors.EXIT_INPUT
    assert "Traceback (most recent call last)" in debug.stderr and "InputError" in debug.stderr
    assert len(error_lines(debug.stderr)) == 1


@pytest.mark.slow
def test_ctrl_c_stops_a_build_cleanly_and_the_rerun_resumes(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    write_small_pool(pool, 40)
    dest = tmp_path / "bundle"
    args = [tool("ff-index"), "build", str(pool), str(dest), *FAST_INDEX_ARGS, "--chunk-size", "1"]
    proc = subprocess.Popen(args, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = tmp_path / ".bundle.partial" / "shards"
    while proc.poll() is None and len(list(shards.glob("*.meta.parquet"))) < 3:
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the build finished before the interrupt arrived")
    result = subprocess.CompletedProcess(args, proc.returncode, out, err)
    assert_clean_failure(result, errors.EXIT_INTERRUPTED, "interrupted", "rerun")
    resumed = run("ff-index", args[1:])
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stdout + resumed.stderr
