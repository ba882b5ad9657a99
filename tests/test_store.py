"""modelfit_to_zarr: region by region into zarr, resumable after a crash."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import models

from xarray_modelfit import ModelFitError, modelfit, modelfit_to_zarr
from xarray_modelfit.testing import gaussian_cube

MODEL = models.Gaussian1D(2.0, 0.0, 1.2)


@pytest.fixture
def cube():
    data, _ = gaussian_cube(ny=6, nx=5, nchan=40, seed=8)
    return data.chunk({"y": 2})


class DiesAfter:
    """A dask scheduler that computes ``n`` graphs, then fails like a lost cluster."""

    def __init__(self, n):
        self.calls, self.n = 0, n

    def __call__(self, dsk, keys, **kwargs):
        self.calls += 1
        if self.calls > self.n:
            raise OSError("connection to the scheduler was lost")
        return dask.get(dsk, keys, **kwargs)


@pytest.mark.parametrize("engine", ["loop", "batched"])
def test_writes_all_regions_and_equals_modelfit(cube, tmp_path, engine):
    out = modelfit_to_zarr(
        cube, MODEL, "velocity", tmp_path / "r.zarr", engine=engine, scheduler="threads"
    )
    direct = modelfit(cube, MODEL, "velocity", engine=engine, scheduler="threads")
    for name in direct.data_vars:
        xr.testing.assert_identical(out[name].load(), direct[name])
    assert out.attrs["n_fits"] == 30 and out.attrs["engine"] == engine


def test_crash_keeps_written_regions_and_resume_finishes(cube, tmp_path):
    store = tmp_path / "r.zarr"
    with pytest.raises(
        ModelFitError, match=r"1 of 3 regions are written .* call modelfit_to_zarr again"
    ):
        modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler=DiesAfter(1))
    partial = xr.open_zarr(store)
    direct = modelfit(cube, MODEL, "velocity", scheduler="synchronous")
    xr.testing.assert_identical(partial["amplitude"][:2].load(), direct["amplitude"][:2])
    assert np.isnan(partial["amplitude"][2:].values).all()
    counting = DiesAfter(100)
    out = modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler=counting)
    assert counting.calls == 2  # only the two missing regions were fitted
    xr.testing.assert_identical(out["amplitude"].load(), direct["amplitude"])


def test_needs_an_iterated_dim(tmp_path):
    spectrum = xr.DataArray(np.exp(-0.5 * np.linspace(-3, 3, 20) ** 2), dims="v")
    with pytest.raises(ModelFitError, match="needs at least one iterated dim"):
        modelfit_to_zarr(spectrum, MODEL, "v", tmp_path / "x.zarr")
    with pytest.raises(ModelFitError, match="always computes"):
        modelfit_to_zarr(spectrum, MODEL, "v", tmp_path / "x.zarr", compute=False)


def test_zarr_input_chunked_along_the_fitting_dim(cube, tmp_path):
    """A store with one chunk per channel is rechunked by dask, never loaded whole."""
    cube.to_dataset(name="cube").chunk({"velocity": 1, "y": 3, "x": 5}).to_zarr(
        tmp_path / "in.zarr"
    )
    lazy = xr.open_zarr(tmp_path / "in.zarr")["cube"]
    assert len(lazy.chunks[0]) == 40
    res = modelfit(lazy, MODEL, "velocity", compute=False)
    assert res["amplitude"].chunks is not None
    xr.testing.assert_identical(
        res.compute(scheduler="threads")["amplitude"],
        modelfit(cube.compute(), MODEL, "velocity", scheduler="threads")["amplitude"],
    )
