"""Run a build's chunks on a Dask cluster through joblib's dask backend.

Workers must see the pool and the bundle's parent folder at the same paths as
the client (a shared file system): they write their shards straight into the
staging folder, and the client assembles the bundle exactly as a local build does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from shared.errors import UsageError

# Seconds a build waits for the scheduler to have a worker (workers may still be starting).
WORKER_WAIT_ENV = "FLUXFRAME_DASK_WORKER_WAIT"
DEFAULT_WORKER_WAIT = 60.0


def _wait_for_a_worker(client: object, scheduler: str) -> None:
    """Refuse a scheduler with no worker in one line, instead of tasks that never run (joblib's timeout)."""
    raw = os.environ.get(WORKER_WAIT_ENV, "")
    try:
        wait = float(raw) if raw else DEFAULT_WORKER_WAIT
    except ValueError:
        raise UsageError(f"{WORKER_WAIT_ENV} must be a number of seconds, got {raw!r}") from None
    try:
        client.wait_for_workers(1, timeout=wait)  # type: ignore[attr-defined]
    except TimeoutError:
        raise UsageError(
            f"the Dask scheduler {scheduler} has no worker (waited {wait:g} s; {WORKER_WAIT_ENV} sets the wait): "
            f"start some with `dask worker {scheduler}`"
        ) from None


@contextlib.contextmanager
def dask_backend(scheduler: str | None, jobs: int) -> Iterator[None]:
    """Connect to ``scheduler`` (or start a local cluster of ``jobs`` workers) for the block's joblib calls."""
    try:
        from dask.distributed import Client  # noqa: F401  (checks the extra is installed)
    except ImportError:
        raise UsageError("--backend dask needs the [dask] extra: pip install 'fluxframe[dask]'") from None
    import joblib

    # Dask's nannies write their workers' settings (OMP_NUM_THREADS=1, ...) into this process's
    # environment and leave them there: every later child process would then run single-threaded.
    environment = dict(os.environ)
    try:
        client, cluster = _connect(scheduler, jobs)
        try:
            if scheduler:
                _wait_for_a_worker(client, scheduler)
            with joblib.parallel_config(backend="dask"):
                yield
        finally:
            client.close()  # type: ignore[attr-defined]
            if cluster is not None:
                cluster.close()  # type: ignore[attr-defined]
    finally:
        _restore_environment(environment)


def _connect(scheduler: str | None, jobs: int) -> tuple[object, object | None]:
    """(client, the local cluster it runs on or None), or a one-line UsageError."""
    from dask.distributed import Client, LocalCluster

    try:
        if scheduler:
            # Dask's own connect timeout (distributed.comm.timeouts.connect, 30 s unless configured,
            # e.g. DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s) bounds the wait for a scheduler.
            return Client(scheduler), None  # type: ignore[no-untyped-call]
        # The workers share this machine's cores: one ONNX Runtime thread each unless told otherwise.
        threads = os.environ.get("FLUXFRAME_ORT_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=jobs,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env={"FLUXFRAME_ORT_THREADS": threads},
        )
        return Client(cluster), cluster  # type: ignore[no-untyped-call]
    except OSError as exc:
        where = f"reach the Dask scheduler {scheduler}" if scheduler else "start a local Dask cluster"
        raise UsageError(f"cannot {where}: {exc}") from None
    except ValueError as exc:  # a malformed address: no port, unknown scheme
        raise UsageError(f"bad Dask scheduler address {scheduler!r}: {exc} (expected tcp://host:8786)") from None


def _restore_environment(saved: dict[str, str]) -> None:
    for name in set(os.environ) - set(saved):
        del os.environ[name]
    for name, value in saved.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
