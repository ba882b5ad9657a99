"""refit="neighbours": suspect fits refitted from their good neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.modeling import models

from xarray_modelfit import ModelFitError, Status, modelfit
from xarray_modelfit.testing import gaussian_cube


@pytest.fixture(scope="module")
def moving_lines():
    """Lines whose centre sweeps from -7 to +7 across the map: one global start fails on one side."""
    cube, truth = gaussian_cube(16, 16, 64, noise=0.1, seed=4)
    v = cube.velocity.values
    xx = np.linspace(-1, 1, 16)[None, :] * np.ones((16, 1))
    mean = 7 * xx
    data = truth["amplitude"] * np.exp(-0.5 * ((v[:, None, None] - mean) / truth["stddev"]) ** 2)
    data = data + np.random.default_rng(1).normal(0, 0.1, data.shape)
    return cube.copy(data=data), mean


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_refit_repairs_fits_from_a_bad_global_start(moving_lines, engine):
    cube, mean = moving_lines
    model = models.Gaussian1D(2, -6, 1.0)
    first = modelfit(cube, model, "velocity", engine=engine, scheduler="threads")
    wrong = np.abs(first["mean"].values - mean) > 0.5
    assert wrong.sum() > 50  # the global start misses the lines on the far side
    res = modelfit(cube, model, "velocity", engine=engine, scheduler="threads", refit="neighbours")
    assert (np.abs(res["mean"].values - mean) > 0.5).sum() == 0
    assert (res.fit_status == Status.CONVERGED).all()
    replaced = res.fit_refit_pass.values > 0
    assert replaced[wrong].all()
    # a refit is kept only where chi2 fell
    had_chi2 = np.isfinite(first.fit_chi2.values)
    assert (res.fit_chi2_drop.values[replaced & had_chi2] > 0).all()
    assert np.isnan(res.fit_chi2_drop.values[replaced & ~had_chi2]).all()
    np.testing.assert_array_equal(res.fit_chi2_drop.values[~replaced], 0)
    np.testing.assert_array_equal(res["mean"].values[~replaced], first["mean"].values[~replaced])
    assert res.attrs["refit"] == "neighbours" and res.attrs["n_converged"] == 256


def test_refit_lazy_runs_fixed_passes(moving_lines):
    cube, mean = moving_lines
    model = models.Gaussian1D(2, -6, 1.0)
    lazy = modelfit(cube.chunk({"y": 8}), model, "velocity", refit="neighbours", compute=False)
    assert lazy["mean"].chunks is not None
    done = lazy.compute(scheduler="threads")
    first = modelfit(cube, model, "velocity", scheduler="threads")
    wrong_before = (np.abs(first["mean"].values - mean) > 0.5).sum()
    wrong_after = (np.abs(done["mean"].values - mean) > 0.5).sum()
    assert wrong_after < wrong_before / 2  # four passes repair the region near good fits
    assert int(done.fit_refit_pass.max()) <= 4


def test_refit_errors(moving_lines):
    cube, _ = moving_lines
    with pytest.raises(ModelFitError, match="refit must be None or 'neighbours'"):
        modelfit(cube, models.Gaussian1D(), "velocity", refit="again")
    spectrum = cube.isel(y=0, x=0)
    with pytest.raises(ModelFitError, match="no neighbours"):
        modelfit(spectrum, models.Gaussian1D(), "velocity", refit="neighbours")


def test_refit_takes_one_model_and_a_dataarray(moving_lines):
    cube, _ = moving_lines
    with pytest.raises(ModelFitError, match="takes one model and a DataArray"):
        modelfit(cube, [models.Gaussian1D()], "velocity", refit="neighbours")
    with pytest.raises(ModelFitError, match="takes one model and a DataArray"):
        modelfit(cube.to_dataset(name="c"), models.Gaussian1D(), "velocity", refit="neighbours")


def test_a_refit_that_finds_the_same_optimum_does_not_count_as_a_replacement():
    """Seasonal cycles: 2 of 12 first fits stop at the iteration limit; others are outliers by
    their phase (A, phi) vs (-A, phi + 1/2) but already optimal: only the 2 are replaced."""
    import pandas as pd

    rng = np.random.default_rng(2)
    time = pd.date_range("2000-01-01", periods=120, freq="MS")
    t = (time.values - time.values[0]).astype("timedelta64[D]").astype(float)
    tas = (280 + 1e-3 * t[:, None, None] + 10 * np.sin(2 * np.pi * t / 365.25)[:, None, None]
           + rng.normal(0, 0.3, (120, 4, 3)))  # fmt: skip
    da = xr.DataArray(tas, dims=("time", "lat", "lon"),
                      coords={"time": time, "lat": [10.0, 20, 30, 40], "lon": [0.0, 1, 2]})  # fmt: skip
    model = models.Linear1D(0, 0) + models.Sine1D(1, 1 / 365.25, 0.0, fixed={"frequency": True})
    first = modelfit(da, model, "time", scheduler="synchronous")
    again = modelfit(da, model, "time", refit="neighbours", scheduler="synchronous")
    stuck = first.fit_status.values == Status.MAX_ITERATIONS
    assert stuck.sum() == 2
    np.testing.assert_array_equal(again.fit_refit_pass.values > 0, stuck)
    assert (again.fit_chi2.values[stuck] < 0.01 * first.fit_chi2.values[stuck]).all()
    np.testing.assert_array_equal(
        again.amplitude_1.values[~stuck], first.amplitude_1.values[~stuck]
    )


def test_refit_of_an_empty_map_is_an_empty_result():
    cube, _ = gaussian_cube(ny=4, nx=4, nchan=30)
    empty = cube.isel(y=slice(0, 0))
    res = modelfit(empty, models.Gaussian1D(2, 0, 1.2), "velocity", refit="neighbours")
    plain = modelfit(empty, models.Gaussian1D(2, 0, 1.2), "velocity")
    assert res.sizes == plain.sizes and res.amplitude.size == 0
    assert {"fit_refit_pass", "fit_chi2_drop"} <= set(res.data_vars)
