"""Progress of long runs: a bar of fits done.

Local schedulers report through a dask callback that counts the fits in every
finished kernel task (tqdm draws the bar); a dask.distributed run uses the
cluster's own progress display.
"""

from __future__ import annotations

from contextlib import contextmanager

import xarray as xr
from dask.callbacks import Callback

#: name prefix of the kernel's tasks (``xr.apply_ufunc`` names them by function)
KERNEL_PREFIX = "fit_chunk_"


class FitProgress(Callback):
    """A dask callback that advances a tqdm bar by the fits of each finished chunk."""

    def __init__(self, total: int, **tqdm_kwargs):
        super().__init__()
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            raise ImportError("progress=True needs tqdm: pip install tqdm") from None
        self.bar = tqdm(total=total, unit="fit", desc="modelfit", **tqdm_kwargs)
        self.done = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name.startswith(KERNEL_PREFIX) and hasattr(result, "shape"):
            n = 1
            for size in result.shape[:-1]:
                n *= size
            self.done += n
            self.bar.update(n)

    def _finish(self, dsk, state, errored):
        self.bar.close()


@contextmanager
def _nothing():
    yield None


def compute_with_progress(ds: xr.Dataset, scheduler, total: int, progress: bool) -> xr.Dataset:
    """``ds.compute`` on ``scheduler``, showing a bar of fits done if asked."""
    client = _client(scheduler)
    if client is not None:
        if not progress:
            return ds.compute(scheduler=client) if scheduler != "default" else ds.compute()
        from distributed import progress as distributed_progress

        future = client.compute(ds)
        distributed_progress(future)
        return future.result()
    kwargs = {} if scheduler == "default" else {"scheduler": scheduler}
    with FitProgress(total) if progress else _nothing():
        return ds.compute(**kwargs)


def _client(scheduler):
    """The distributed Client a run will use, or None for a local scheduler."""
    if scheduler is not None and type(scheduler).__name__ == "Client":
        return scheduler
    if scheduler == "default":
        try:
            from distributed import get_client

            return get_client()
        except (ImportError, ValueError):
            return None
    return None
