"""A real dask.distributed cluster on loopback: 2 worker processes."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.modeling import models

from xarray_modelfit import modelfit
from xarray_modelfit.testing import gaussian_cube

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def data():
    cube, _ = gaussian_cube(ny=6, nx=7, nchan=41, seed=11)
    return cube


@pytest.mark.parametrize("engine", ["loop", "auto"])
def test_cluster_equals_synchronous(client, data, engine):
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    sync = modelfit(data, model, "velocity", engine=engine, scheduler="synchronous")
    on_client = modelfit(data, model, "velocity", engine=engine, scheduler=client, chunk_n_max=10)
    xr.testing.assert_identical(on_client, sync)
    # "default" uses the active client; dask input stays lazy until then
    default = modelfit(
        data.chunk({"y": 3}), model, "velocity", engine=engine, scheduler="default", chunk_n_max=10
    )
    xr.testing.assert_identical(default, sync)
    assert len(client.run(lambda: 1)) == 2


def test_diagnostics_from_workers(client, data, tmp_path):
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(
        data.isel(y=[0, 1]),
        model,
        "velocity",
        engine="loop",
        scheduler=client,
        diagnostics="all",
        diagnostics_path=tmp_path,
        chunk_n_max=4,
    )
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == [f"{y}_{x}" for y in range(2) for x in range(7)]
    assert np.isfinite(res.amplitude).all()


def test_progress_on_cluster(client, data, capsys):
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    sync = modelfit(data, model, "velocity", scheduler="synchronous")
    shown = modelfit(data, model, "velocity", scheduler=client, progress=True, chunk_n_max=10)
    xr.testing.assert_identical(shown, sync)


def test_auto_p0_selection_and_refit_on_cluster(client, data):
    candidates = [models.Gaussian1D(), models.Gaussian1D() + models.Gaussian1D()]
    sync = modelfit(data, candidates, "velocity", p0="auto", scheduler="synchronous")
    on_client = modelfit(data, candidates, "velocity", p0="auto", scheduler=client, chunk_n_max=10)
    xr.testing.assert_identical(on_client, sync)
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    sync = modelfit(data, model, "velocity", refit="neighbours", scheduler="synchronous")
    on_client = modelfit(data, model, "velocity", refit="neighbours", scheduler=client)
    xr.testing.assert_identical(on_client, sync)
