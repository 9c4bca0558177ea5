"""ff-index as a new user meets it (issue 13): every refusal says what and why, and leaves nothing behind.

Each test drives the real ff-index command (the installed console script, or click's runner for
the in-process checks) on real pictures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from fluxframe_index.cli import main
from shared.bundle import open_bundle
from shared.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_STATE, EXIT_USAGE
from tests.hostile.procs import FAST_INDEX_ARGS, argv, child_env, error_lines, run
from tests.pools import copy_tree, make_pool

# The suite's fast build options, without --quiet: the notes on stderr are what some tests read.
NOT_QUIET = [a for a in FAST_INDEX_ARGS if a != "--quiet"]


def ff_index(*args: str | os.PathLike[str]) -> Result:
    return CliRunner().invoke(main, [os.fspath(a) for a in args], prog_name="ff-index")


def the_error(result: Result) -> str:
    """The one line ff-index printed, with no traceback and nothing on stdout."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert lines[0].startswith("ff-index: error: "), lines[0]
    return lines[0]


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` (hidden ones too) with its size and mtime: what 'nothing changed' compares."""
    out = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        out[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return out


# --- a pool with nothing usable --------------------------------------------------------------------


def test_a_pool_of_unusable_files_names_each_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "notes.jpg").write_text("shopping list: milk, eggs\n")  # text named .jpg
    (pool / "page.jpeg").write_text("<html><body>not a picture</body></html>\n")
    (pool / "empty.png").write_bytes(b"")
    for i in range(6):
        (pool / f"readme-{i}.txt").write_text("not a picture either\n")
    monkeypatch.chdir(tmp_path)  # a relative BUNDLE: its staging folder would land here
    before = tree(tmp_path)
    line = the_error(result := ff_index("build", "pool", "bundle", *FAST_INDEX_ARGS))
    assert result.exit_code == EXIT_INPUT
    assert "none of the 3 image files could be used" in line
    for name, reason in (("notes.jpg", "not_an_image"), ("page.jpeg", "not_an_image"), ("empty.png", "empty")):
        assert f"{name} ({reason})" in line
    assert "9 files not used" in line and "and 4 more" in line  # the first five named, then a count
    assert tree(tmp_path) == before  # no bundle, no .bundle.partial/, no lock file


def test_an_empty_pool_exits_3_as_the_reference_says(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = ff_index("build", tmp_path / "empty", tmp_path / "bundle", *FAST_INDEX_ARGS)
    assert result.exit_code == EXIT_INPUT
    assert "no image files found (looked for .bmp" in the_error(result)
    (tmp_path / "empty" / "clip.mp4").write_bytes(b"\x00" * 64)
    line = the_error(ff_index("build", tmp_path / "empty", tmp_path / "bundle", *FAST_INDEX_ARGS))
    assert "1 file not used: clip.mp4 (not_image_extension)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    reference = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()  # the exit-code table
    assert f"| {EXIT_INPUT} | bad input:" in reference and "no images in the pool" in reference


def test_an_update_that_leaves_nothing_usable_names_the_files_and_keeps_the_bundle(
    small_pool: Path, tmp_path: Path
) -> None:
    pool = copy_tree(small_pool, tmp_path / "pool")
    bundle = tmp_path / "bundle"
    assert ff_index("build", pool, bundle, *FAST_INDEX_ARGS).exit_code == 0
    before = tree(tmp_path / "bundle")
    for picture in pool.rglob("*.jpg"):
        picture.write_text("overwritten by a sync tool\n")  # same names, no pictures any more
    result = ff_index("build", pool, bundle, *FAST_INDEX_ARGS, "--update")
    assert result.exit_code == EXIT_INPUT
    line = the_error(result)
    assert "no usable images left after the update; 12 files not used: d0/img-00000.jpg (not_an_image)" in line
    assert tree(tmp_path / "bundle") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "pool"]  # no .bundle.partial/


# --- FluxFrame's own folders inside a pool --------------------------------------------------------------


def test_bundles_and_render_outputs_inside_a_pool_are_skipped_and_counted(small_pool: Path, tmp_path: Path) -> None:
    pool = copy_tree(small_pool, tmp_path / "pool")
    first = ff_index("build", pool, tmp_path / "bundle", *FAST_INDEX_ARGS)
    assert first.exit_code == 0, first.output
    # A user moves last month's bundle and a render into the pool, render frames and all.
    shutil.copytree(tmp_path / "bundle", pool / "old-bundle")
    render = pool / "holiday-out"
    (render / "matched_frames").mkdir(parents=True)
    for i, picture in enumerate(sorted(small_pool.rglob("*.jpg"))[:4]):
        shutil.copy(picture, render / "matched_frames" / f"frame_{i:06d}.jpg")
    (render / "results.json").write_text(json.dumps({"format": "fluxframe-render-results", "frames": []}))
    # Someone else's manifest.json is no reason to skip their photos.
    other = pool / "camera-export"
    shutil.copytree(small_pool / "d0", other)
    (other / "manifest.json").write_text(json.dumps({"files": ["a.jpg"]}))

    result = ff_index("build", pool, tmp_path / "bundle2", *NOT_QUIET)
    assert result.exit_code == 0, result.output
    assert "skipped FluxFrame's own folders inside the pool: holiday-out (render output), old-bundle (bundle)" in (
        result.stderr
    )
    extra = len(list(other.glob("*.jpg")))
    assert f"indexed {12 + extra} images, rejected 1, skipped 2 FluxFrame folders" in result.stdout
    paths = open_bundle(tmp_path / "bundle2").relative_paths(list(range(12 + extra)))
    assert not any(p.startswith(("old-bundle/", "holiday-out/")) for p in paths)
    # --quiet drops progress only: a skipped folder is a warning, and stays.
    quiet = ff_index("build", pool, tmp_path / "bundle3", *FAST_INDEX_ARGS)
    assert quiet.exit_code == 0 and "skipped 2 FluxFrame folders" in quiet.stdout
    assert [line.split(":")[0] for line in quiet.stderr.splitlines()] == [
        "skipped FluxFrame's own folders inside the pool",
        "rejected",
    ]


def test_a_bundle_path_inside_the_pool_is_refused_and_nothing_changes(small_pool: Path, tmp_path: Path) -> None:
    pool = copy_tree(small_pool, tmp_path / "pool")
    before = tree(tmp_path)
    for inside in (pool / "bundle", pool / "d1" / "new" / "bundle", pool):
        result = ff_index("build", pool, inside, *FAST_INDEX_ARGS)
        assert result.exit_code == EXIT_USAGE
        assert "the bundle would be inside the pool" in the_error(result)
    os.symlink(pool, tmp_path / "link-to-pool")  # the same place by another name
    result = ff_index("build", pool, tmp_path / "link-to-pool" / "bundle", *FAST_INDEX_ARGS)
    assert result.exit_code == EXIT_USAGE
    (tmp_path / "link-to-pool").unlink()
    assert tree(tmp_path) == before


# --- replacing a bundle ----------------------------------------------------------------------------------


def test_another_method_does_not_silently_replace_a_bundle(small_pool: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert ff_index("build", small_pool, bundle, *FAST_INDEX_ARGS).exit_code == 0
    canny_id = open_bundle(bundle).bundle_id
    other = [a if a != "canny" else "hog" for a in FAST_INDEX_ARGS]
    refused = ff_index("build", small_pool, bundle, *other)
    assert refused.exit_code == EXIT_STATE
    line = the_error(refused)
    assert "method 'canny' -> 'hog'" in line and "--replace" in line
    assert open_bundle(bundle).bundle_id == canny_id
    replaced = ff_index("build", small_pool, bundle, *other, "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert open_bundle(bundle).spec.method == "hog"


def test_a_folder_that_is_not_a_bundle_is_never_replaced(small_pool: Path, tmp_path: Path) -> None:
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.txt").write_text("three years of work\n")
    result = ff_index("build", small_pool, documents, *FAST_INDEX_ARGS, "--replace")
    assert result.exit_code == EXIT_STATE
    assert "is not a FluxFrame bundle; refusing to replace it" in the_error(result)
    assert [p.name for p in documents.iterdir()] == ["thesis.txt"]


# --- progress off a terminal -------------------------------------------------------------------------


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(small_pool: Path, tmp_path: Path) -> None:
    result = run("ff-index", ["build", small_pool, tmp_path / "bundle", *NOT_QUIET])
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr  # no bar redraws in a log
    assert "extract: 12/12 img (100%)" in result.stderr and "done in" in result.stderr
    quiet = run("ff-index", ["build", small_pool, tmp_path / "bundle2", *FAST_INDEX_ARGS])
    assert quiet.returncode == 0 and quiet.stderr == ""


# --- help and a bare command --------------------------------------------------------------------------


def test_a_bare_build_prints_its_usage_and_how_to_get_help() -> None:
    result = ff_index("build")
    assert result.exit_code == EXIT_USAGE
    assert "Usage: ff-index build [OPTIONS] POOL BUNDLE" in result.stderr
    assert "ff-index build --help" in result.stderr
    assert "Traceback" not in result.output


# --- Ctrl-C ------------------------------------------------------------------------------------------


def importing_the_tool(pid: int) -> bool:
    """True once the process loads numpy, which the tools import only after shared.entry has
    taken over Ctrl-C (before that, Python's start-up itself runs: not FluxFrame's to handle)."""
    try:
        return "_multiarray_umath" in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True  # already gone


def interrupt(command: list[str], after: float) -> subprocess.CompletedProcess[str]:
    """Start ``command``, wait until it imports the tool, then ``after`` seconds, then press Ctrl-C.

    Ctrl-C in a terminal signals the whole foreground process group, workers included.
    """
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), start_new_session=True
    )
    deadline = time.monotonic() + 30
    while not importing_the_tool(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(after)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process state from /proc (Linux)")
@pytest.mark.parametrize("tool_args", [["ff-index", "info", "nowhere"], ["ff-render", "--help"]])
def test_ctrl_c_while_a_tool_starts_is_one_line_and_exit_130(tool_args: list[str]) -> None:
    for after in (0.0, 0.1):  # inside the imports of numpy, FAISS, OpenCV... (~0.5 s)
        result = interrupt(argv(tool_args[0], tool_args[1:]), after)
        assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr
        if result.returncode != 0:  # a fast machine may be done already
            assert result.returncode == EXIT_INTERRUPTED, result.stderr
            assert result.stderr.strip() == f"{tool_args[0]}: interrupted while starting; nothing was done"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads process state from /proc (Linux)")
def test_ctrl_c_at_any_moment_of_a_parallel_build_is_one_line_and_exit_130(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, 96, seed=3, max_side=800)
    bundle = tmp_path / "bundle"
    command = argv("ff-index", ["build", pool, bundle, "--method", "canny", "--jobs", "2", "--chunk-size", "4"])
    command.append("--quiet")
    # While importing, while the workers start, while they extract: each moment once.
    for after in (0.0, 0.3, 0.7, 1.2, 2.0, 3.0):
        result = interrupt(command, after)
        assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, (after, result.stderr)
        if result.returncode == 0:
            break  # finished before the Ctrl-C: later moments would be too
        assert result.returncode == EXIT_INTERRUPTED, (after, result.stderr)
        assert len(error_lines(result.stderr)) == 1 == len(result.stderr.splitlines()), result.stderr
        assert result.stderr.startswith("ff-index: interrupted")
    # Finished work is kept: the rerun completes (resuming finished shards) into a whole bundle.
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert open_bundle(bundle).count == 96


@pytest.mark.slow
def test_ctrl_c_as_a_build_ends_is_a_clean_exit_or_one_line(tmp_path: Path) -> None:
    """A Ctrl-C just after the summary, while the interpreter exits (joblib, threads): exit 0 and
    nothing on stderr, or the one line and 130; never 'Exception ignored', a traceback or death by SIGINT."""
    pool = tmp_path / "pool"
    make_pool(pool, 16, seed=5, max_side=400)
    for attempt in range(5):
        bundle = tmp_path / f"bundle-{attempt}"
        command = argv("ff-index", ["build", pool, bundle, "--jobs", "2", "--quiet"])
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), start_new_session=True
        )
        assert proc.stdout is not None
        summary = proc.stdout.readline()  # the work is done: the process is on its way out
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert summary.startswith("indexed"), summary
        # One line of text. A blank line before it has been seen under load (not FluxFrame's write:
        # a library's, on its way out); it is counted as what it is, not hidden.
        text = [line for line in stderr.splitlines() if line.strip()]
        one_line = len(text) == 1 and text[0].startswith("ff-index: interrupted") and stderr.count("\n") <= 2
        assert (proc.returncode, stderr) == (0, "") or (proc.returncode == EXIT_INTERRUPTED and one_line), (
            attempt,
            proc.returncode,
            stderr,
        )
