"""Faults on a real cluster: a worker killed mid-run loses no fit."""

from __future__ import annotations

import os
import signal
import time

import pytest
import xarray as xr
from astropy.modeling import models

from xarray_modelfit import modelfit
from xarray_modelfit.testing import gaussian_cube

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.distributed


def _in_memory(client) -> int:
    return client.run_on_scheduler(
        lambda dask_scheduler: sum(t.state == "memory" for t in dask_scheduler.tasks.values())
    )


def test_killed_worker_is_rescheduled():
    cube, _ = gaussian_cube(ny=12, nx=50, nchan=41, seed=3)
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    expected = modelfit(cube, model, "velocity", engine="loop", scheduler="threads")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as client:
            lazy = modelfit(cube, model, "velocity", engine="loop", compute=False, chunk_n_max=20)
            future = client.compute(lazy)
            # wait until some chunks are done, then kill one worker process hard
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _in_memory(client) < 5:
                time.sleep(0.05)
            assert not future.done(), "the run ended before a worker could be killed"
            victim = list(cluster.workers.values())[0]
            os.kill(victim.process.pid, signal.SIGKILL)
            result = future.result(timeout=300)
    finally:
        cluster.close()
    xr.testing.assert_identical(result.drop_attrs(), expected.drop_attrs())


def test_cluster_death_keeps_written_regions(tmp_path):
    """The whole cluster goes away mid-run: a clear error, finished regions intact, resumable."""
    import threading

    from xarray_modelfit import ModelFitError, modelfit_to_zarr
    from xarray_modelfit.store import _done

    cube, _ = gaussian_cube(ny=12, nx=40, nchan=41, seed=5)
    cube = cube.chunk({"y": 2})
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    store = tmp_path / "fit.zarr"
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = distributed.Client(cluster)

    def kill_after_first_region():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _done(store):
            time.sleep(0.02)
        cluster.close()

    killer = threading.Thread(target=kill_after_first_region)
    killer.start()
    try:
        with pytest.raises(ModelFitError, match=r"regions are written to .* to resume"):
            modelfit_to_zarr(cube, model, "velocity", store, engine="loop", scheduler=client)
    finally:
        killer.join()
        client.close()
    written = _done(store)
    assert 1 <= len(written) < 6
    expected = modelfit(cube, model, "velocity", engine="loop", scheduler="threads")
    partial = xr.open_zarr(store)
    for start, stop in written:
        xr.testing.assert_identical(
            partial["amplitude"][start:stop].load(), expected["amplitude"][start:stop]
        )
    resumed = modelfit_to_zarr(cube, model, "velocity", store, engine="loop", scheduler="threads")
    xr.testing.assert_identical(resumed["amplitude"].load(), expected["amplitude"])
