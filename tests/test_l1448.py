"""astropy's walkthrough "Fitting models in parallel with N-dimensional data" on L1448.

The loop engine must reproduce astropy's ``parallel_fit_dask`` on every pixel.
"""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.modeling import fitting, models
from astropy.modeling.fitting import parallel_fit_dask
from astropy.wcs import WCS

import xarray_modelfit

SUB = (slice(None), slice(25, 75), slice(35, 85))


def walkthrough_model(bounded: bool):
    model = models.Gaussian1D(amplitude=1 * u.one, mean=4000 * u.m / u.s, stddev=500 * u.m / u.s)
    if bounded:
        model.mean.bounds = (3000, 6000)
    return model


@pytest.fixture(scope="module")
def l1448(l1448_path):
    with fits.open(l1448_path) as hdul:
        header, data = hdul[0].header, hdul[0].data.copy()
    return data, WCS(header)


@pytest.fixture(scope="module")
def astropy_fits(l1448):
    data, wcs = l1448
    out = {}
    for bounded in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[bounded] = parallel_fit_dask(
                data=data[SUB],
                model=walkthrough_model(bounded),
                fitter=fitting.TRFLSQFitter(),
                world=wcs[SUB],
                fitting_axes=0,
                data_unit=u.one,
                scheduler="synchronous",
            )
    return out


def test_velocity_coordinate_is_astropys(l1448_path, l1448):
    _, wcs = l1448
    cube = xarray_modelfit.open_fits(l1448_path)
    expected = wcs.pixel_to_world(0, 0, np.arange(53))[1].to_value(u.m / u.s)
    np.testing.assert_allclose(cube.velocity.values, expected, rtol=1e-12)
    assert u.Unit(cube.velocity.attrs["units"]) == u.m / u.s


@pytest.mark.parametrize("bounded", [False, True], ids=["no-bounds", "mean-bounds"])
def test_loop_engine_matches_parallel_fit_dask(l1448_path, astropy_fits, bounded):
    cube = xarray_modelfit.open_fits(l1448_path)[SUB]
    result = cube.modelfit(
        walkthrough_model(bounded),
        dims="velocity",
        fitter=fitting.TRFLSQFitter(),
        engine="loop",
        scheduler="threads",
        data_unit=u.one,
    )
    ref = astropy_fits[bounded]
    assert result["amplitude"].dims == ("y", "x") and result["amplitude"].shape == (50, 50)
    for name in ("amplitude", "mean", "stddev"):
        expected = getattr(ref, name)
        np.testing.assert_allclose(result[name].values, expected.value, rtol=1e-7)
    assert u.Unit(result["mean"].attrs["units"]) == ref.mean.unit
    fitted = result.modelfit.to_model()
    np.testing.assert_allclose(
        fitted.mean.quantity.to_value(u.m / u.s), ref.mean.quantity.to_value(u.m / u.s), rtol=1e-7
    )
    if bounded:
        assert float(result["mean"].min()) >= 3000 and float(result["mean"].max()) <= 6000
    assert result.attrs["n_fits"] == 2500
    assert result.attrs["n_failed"] == 0 and result.attrs["n_skipped"] == 0


def test_quantity_bounds_in_other_units_are_converted(l1448_path, astropy_fits):
    cube = xarray_modelfit.open_fits(l1448_path)[SUB].isel(y=slice(0, 10))
    result = cube.modelfit(
        walkthrough_model(False),
        dims="velocity",
        bounds={"mean": (3, 6) * u.km / u.s},
        engine="loop",
        scheduler="threads",
        data_unit=u.one,
    )
    expected = astropy_fits[True].mean.value[:10]
    np.testing.assert_allclose(result["mean"].values, expected, rtol=1e-7)
