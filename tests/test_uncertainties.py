"""Uncertainties and fit statistics against astropy, scipy's curve_fit and direct formulas."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from astropy.modeling import fitting, models
from scipy.optimize import curve_fit

from xarray_modelfit import load_result, modelfit, save_result
from xarray_modelfit.testing import gaussian_cube

ENGINES = ["loop", "batched"]


def gauss(x, a, m, s):
    return a * np.exp(-0.5 * ((x - m) / s) ** 2)


@pytest.fixture(scope="module")
def data():
    cube, _ = gaussian_cube(ny=3, nx=4, nchan=48, noise=0.1, seed=21)
    return cube


def spectra(cube):
    return cube.transpose("y", "x", "velocity").values.reshape(-1, cube.sizes["velocity"])


@pytest.mark.parametrize("engine", ENGINES)
def test_covariance_matches_astropy_and_curve_fit(data, engine):
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(data, model, "velocity", engine=engine, scheduler="synchronous", covariance=True)
    v = data.velocity.values
    for i, y in enumerate(spectra(data)):
        pos = dict(zip(("y", "x"), np.unravel_index(i, (3, 4)), strict=True))
        fitter = fitting.TRFLSQFitter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter(model.copy(), v, y)
        cov = res.fit_covariance.isel(pos).values
        np.testing.assert_allclose(cov, fitter.fit_info["param_cov"], rtol=2e-3, atol=1e-12)
        popt, pcov = curve_fit(gauss, v, y, p0=[2.0, 0.0, 1.2])
        np.testing.assert_allclose(
            [res[f"{n}_stderr"].isel(pos) for n in model.param_names],
            np.sqrt(np.diag(pcov)),
            rtol=2e-3,
        )
    assert res.fit_covariance.dims == ("y", "x", "param", "param_j")
    assert list(res.param.values) == ["amplitude", "mean", "stddev"]


@pytest.mark.parametrize("engine", ENGINES)
def test_weighted_covariance_is_absolute(data, engine):
    """With weights = 1/sigma the covariance is not rescaled (astropy, curve_fit absolute_sigma)."""
    sigma = 0.1
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    weights = xr.full_like(data, 1 / sigma)
    res = modelfit(data, model, "velocity", weights=weights, engine=engine, scheduler="synchronous")
    y = spectra(data)[5]
    popt, pcov = curve_fit(
        gauss,
        data.velocity.values,
        y,
        p0=[2, 0, 1.2],
        sigma=np.full(y.size, sigma),
        absolute_sigma=True,
    )
    got = [float(res[f"{n}_stderr"].isel(y=1, x=1)) for n in model.param_names]
    np.testing.assert_allclose(got, np.sqrt(np.diag(pcov)), rtol=2e-3)
    chi2 = np.sum(((gauss(data.velocity.values, *popt) - y) / sigma) ** 2)
    np.testing.assert_allclose(res.fit_chi2.isel(y=1, x=1), chi2, rtol=1e-5)
    # with correct sigma, reduced chi2 is about 1
    assert 0.6 < float(res.fit_redchi2.median()) < 1.5


@pytest.mark.parametrize("engine", ENGINES)
def test_statistics_formulas(data, engine):
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(data, model, "velocity", engine=engine, scheduler="synchronous")
    ev = res.modelfit.evaluate(data)
    chi2 = ((data - ev) ** 2).sum("velocity")
    n, k = 48, 3
    xr.testing.assert_allclose(res.fit_chi2, chi2.transpose(*res.fit_chi2.dims), rtol=1e-8)
    np.testing.assert_allclose(res.fit_aic, n * np.log(chi2.values / n) + 2 * k, rtol=1e-8)
    np.testing.assert_allclose(res.fit_bic, n * np.log(chi2.values / n) + k * np.log(n), rtol=1e-8)
    tss = ((data - data.mean("velocity")) ** 2).sum("velocity")
    np.testing.assert_allclose(res.fit_rsquared, 1 - chi2.values / tss.values, rtol=1e-8)
    np.testing.assert_allclose(res.fit_redchi2, chi2.values / (n - k), rtol=1e-8)


def test_diagnostics_survive_netcdf(data, tmp_path):
    res = modelfit(
        data, models.Gaussian1D(2.0, 0.0, 1.2), "velocity", scheduler="synchronous", covariance=True
    )
    save_result(res, tmp_path / "r.nc")
    back = load_result(tmp_path / "r.nc")
    xr.testing.assert_identical(back, res)
    assert back.fit_status.attrs["flag_meanings"].split()[0] == "converged"


def test_linear_fitter_uncertainties_on_both_engines_equal_polyfit():
    """The loop engine reads LinearLSQFitter(calc_uncertainties=True)'s cov_matrix, as astropy
    asks for it; the batched linear engine always gives them. Both equal np.polyfit's."""
    x = np.linspace(0, 10, 40)
    rng = np.random.default_rng(1)
    y = xr.DataArray(1 + 0.5 * x + rng.normal(0, 0.3, (3, 40)), dims=("p", "x"), coords={"x": x})
    kw = {"scheduler": "synchronous"}
    loop = modelfit(y, models.Polynomial1D(2), "x", engine="loop",
                    fitter=fitting.LinearLSQFitter(calc_uncertainties=True), **kw)  # fmt: skip
    batched = modelfit(y, models.Polynomial1D(2), "x", engine="batched",
                       fitter=fitting.LinearLSQFitter(), **kw)  # fmt: skip
    for i in range(3):
        coef, cov = np.polyfit(x, y.values[i], 2, cov=True)
        ref = np.sqrt(np.diag(cov))[::-1]  # polyfit: highest power first
        for res in (loop, batched):
            got = [float(res[f"c{k}_stderr"][i]) for k in range(3)]
            np.testing.assert_allclose(got, ref, rtol=1e-8)
