"""Run a build's chunks on a Dask cluster through joblib's dask backend.

Workers must see the pool and the bundle's parent folder at the same paths as
the client (a shared file system): they write their shards straight into the
staging folder, and the client assembles the bundle exactly as a local build does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from shared.errors import UsageError


@contextlib.contextmanager
def dask_backend(scheduler: str | None, jobs: int) -> Iterator[None]:
    """Connect to ``scheduler`` (or start a local cluster of ``jobs`` workers) for the block's joblib calls."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--backend dask needs the [dask] extra: pip install 'fluxframe[dask]'") from None
    import joblib

    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="30s")  # type: ignore[no-untyped-call]
        else:
            cluster = LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None
            )
            client = Client(cluster)  # type: ignore[no-untyped-call]
    except OSError as exc:
        raise UsageError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
    try:
        with joblib.parallel_config(backend="dask"):
            yield
    finally:
        client.close()  # type: ignore[no-untyped-call]
        if cluster is not None:
            cluster.close()
