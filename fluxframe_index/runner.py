"""Run chunk tasks on a joblib backend (in-process, loky, or dask for a cluster) and time them.

The runner knows nothing of where tasks came from (a pool scan, an update's changed
files): it skips complete shards, runs the rest, reports each chunk, and adds the
workers' stage times to the build's timings.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from joblib import Parallel, delayed, parallel_config

from fluxframe_index.extract import ChunkStats, ChunkTask, extract_chunk
from fluxframe_index.shards import shard_is_complete
from fluxframe_index.timings import BuildTimings
from shared.cli_support import progress_bar
from shared.errors import UsageError


def run_tasks(
    tasks: list[ChunkTask],
    *,
    jobs: int,
    backend: str,
    progress: bool,
    timings: BuildTimings,
    on_chunk: Callable[[ChunkStats], None] | None = None,
) -> int:
    """Extract every task whose shard is not complete yet; return how many were complete already (resumed)."""
    pending = [t for t in tasks if not shard_is_complete(Path(t.shard_dir), t.index)]
    done_images = sum(len(t.paths) for t in tasks) - sum(len(t.paths) for t in pending)
    total = sum(len(t.paths) for t in tasks)
    started = time.perf_counter()
    with progress_bar(total, "extract", "img", progress, initial=done_images) as bar:
        for stats in run_chunks(pending, jobs=jobs, backend=backend):
            bar.update(stats.images)
            timings.add_chunk(stats)
            if on_chunk is not None:
                on_chunk(stats)
    timings.close_extract(time.perf_counter() - started)
    return len(tasks) - len(pending)


def run_chunks(tasks: list[ChunkTask], *, jobs: int, backend: str) -> Iterator[ChunkStats]:
    """Each task's stats as its chunk finishes (in any order)."""
    if not tasks:
        return
    if jobs == 1 and backend == "loky":
        # In-process: no worker start-up, and the same code path as the workers run.
        for task in tasks:
            yield extract_chunk(task)
        return
    parallel = _parallel(jobs, backend)
    with workers_ignore_sigint():
        # Calling parallel starts the workers. A Ctrl-C goes to the whole process group: it must
        # stop this process (which stops the workers and keeps finished shards), never reach a
        # worker still starting up, which would print its own KeyboardInterrupt traceback.
        results = parallel(delayed(extract_chunk)(task) for task in tasks)
    yield from results


@contextlib.contextmanager
def workers_ignore_sigint() -> Iterator[None]:
    """Processes started inside the block ignore SIGINT; this one still gets it, when the block ends.

    An ignored signal stays ignored across exec, and Python then installs no KeyboardInterrupt
    handler. Blocking SIGINT here meanwhile keeps a Ctrl-C pressed during the block pending
    (Linux never discards a blocked signal), so it is delivered as soon as the block ends.
    """
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _parallel(jobs: int, backend: str) -> Parallel:
    if backend != "dask":
        return Parallel(n_jobs=jobs, backend=backend, return_as="generator_unordered", batch_size=1)
    # Not Parallel(backend="dask"): joblib 1.6 then passes its nesting_level on to every Dask task as a
    # keyword argument, and each chunk fails on the worker; a backend made by parallel_config does not.
    try:
        with parallel_config(backend="dask"):
            return Parallel(n_jobs=-1, return_as="generator_unordered", batch_size=1)
    except ValueError:
        raise UsageError(
            "--backend dask needs a Dask client: run the build inside fluxframe_index.distributed.dask_backend"
        ) from None
