"""The batched engine against the loop engine (one astropy fitter call per fit).

The project's quality bar: the batched chi2 is <= the loop engine's chi2 x (1 + 1e-6)
for >= 99% of the fits and worse by more than 1% for <= 0.1% of them; where both
converge, the parameters agree to rtol 1e-4 (>= 99% of those fits). Checked on the
L1448 13CO cube of astropy's walkthrough (sub-cube and full cube) and on synthetic cubes; plus the status of degenerate fits.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from astropy.modeling import fitting, models

import xarray_modelfit
from xarray_modelfit.kernel.status import Status
from xarray_modelfit.testing import gaussian_cube

SUB = {"y": slice(25, 75), "x": slice(35, 85)}  # the walkthrough's sub-cube
FITTERS = {"trf": fitting.TRFLSQFitter, "levmar": fitting.LevMarLSQFitter}
CONVERGED = (Status.CONVERGED, Status.CONVERGED_WITH_WARNINGS)


def fit(data, model, dims="velocity", engine="batched", fitter="trf", **kw):
    fitter = FITTERS[fitter]() if isinstance(fitter, str) else fitter
    sched = {"scheduler": "threads"} if engine == "loop" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = xarray_modelfit.modelfit(
            data, model, dims, fitter=fitter, engine=engine, **sched, **kw
        )
    return out.compute()


def compare(b: xr.Dataset, ref: xr.Dataset, names) -> dict:
    """Fractions of the quality bar (loop fits without a chi2 do not count against)."""
    cb, cl = b.fit_chi2.values.ravel(), ref.fit_chi2.values.ravel()
    with np.errstate(invalid="ignore"):
        ok = (cb <= cl * (1 + 1e-6)) | np.isnan(cl)
        worse = ~(cb <= cl * 1.01) & np.isfinite(cl)
    both = np.isin(b.fit_status.values.ravel(), CONVERGED) & np.isin(
        ref.fit_status.values.ravel(), CONVERGED
    )
    pb = np.stack([b[n].values.ravel() for n in names], axis=1)
    pl = np.stack([ref[n].values.ravel() for n in names], axis=1)
    agree = np.all(np.abs(pb - pl) <= 1e-4 * np.abs(pl), axis=1)
    return {
        "chi2_ok": ok.mean(),
        "worse": worse.mean(),
        "agree": agree[both].mean() if both.any() else 1.0,
        "n_both": int(both.sum()),
    }


def assert_bar(b, ref, names, min_both=0.9):
    s = compare(b, ref, names)
    assert s["chi2_ok"] >= 0.99, s
    assert s["worse"] <= 0.001, s
    assert s["agree"] >= 0.99, s
    assert s["n_both"] >= min_both * b.fit_status.size, s
    return s


# --------------------------------------------------------------------------- L1448
def walkthrough_model(bounded: bool):
    model = models.Gaussian1D(1, 4000, 500)  # data unitless, velocity in m/s
    if bounded:
        model.mean.bounds = (3000, 6000)
    return model


@pytest.fixture(scope="module")
def l1448(l1448_path):
    return xarray_modelfit.open_fits(l1448_path).load()


@pytest.fixture(scope="module")
def loop_reference(l1448):
    """Loop-engine fits of the sub-cube, computed once per (fitter, bounds)."""
    cache = {}

    def get(fitter: str, bounded: bool, region=None) -> xr.Dataset:
        key = (fitter, bounded, region is None)
        if key not in cache:
            data = l1448 if region is None else l1448.isel(region)
            cache[key] = fit(data, walkthrough_model(bounded), engine="loop", fitter=fitter)
        return cache[key]

    return get


@pytest.mark.parametrize("bounded", [False, True], ids=["free", "mean_bounds"])
@pytest.mark.parametrize("fitter", ["trf", "levmar"])
def test_l1448_subcube_batched_vs_loop(l1448, loop_reference, fitter, bounded):
    ref = loop_reference(fitter, bounded, SUB)
    b = fit(l1448.isel(SUB), walkthrough_model(bounded), fitter=fitter)
    assert_bar(b, ref, ("amplitude", "mean", "stddev"))
    if bounded:
        ok = b.fit_status.values < Status.SINGULAR
        mean = b["mean"].values[ok]
        assert np.all((mean >= 3000) & (mean <= 6000))


@pytest.mark.slow
@pytest.mark.parametrize("bounded", [False, True], ids=["free", "mean_bounds"])
@pytest.mark.parametrize("fitter", ["trf", "levmar"])
def test_l1448_full_cube_batched_vs_loop(l1448, loop_reference, fitter, bounded):
    ref = loop_reference(fitter, bounded)
    b = fit(l1448, walkthrough_model(bounded), fitter=fitter)
    assert_bar(b, ref, ("amplitude", "mean", "stddev"))


# --------------------------------------------------------------------------- synthetic
def components_model(k: int, continuum: bool):
    spacing = 16.0 / k
    model = None
    for j in range(k):
        g = models.Gaussian1D(2.0, -8.0 + spacing * (j + 0.5), 1.4)
        model = g if model is None else model + g
    return model + models.Const1D(0.4) if continuum else model


@pytest.mark.parametrize("fitter", ["trf", "levmar"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_synthetic_components_with_continuum(k, fitter):
    cube, _ = gaussian_cube(ny=6, nx=7, nchan=61, n_components=k, continuum=0.5, seed=k)
    model = components_model(k, continuum=True)
    b = fit(cube, model, fitter=fitter)
    ref = fit(cube, model, engine="loop", fitter=fitter)
    assert_bar(b, ref, model.param_names)


def test_synthetic_gaussian2d():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:15, 0:17].astype(float)
    n = 24
    imgs = np.stack(
        [
            models.Gaussian2D(
                rng.uniform(2, 4), rng.uniform(7, 9), rng.uniform(6, 8),
                rng.uniform(1.6, 2.4), rng.uniform(1.2, 1.6), rng.uniform(0, 0.6),
            )(xx, yy)
            for _ in range(n)
        ]
    ) + rng.normal(0, 0.05, (n, 15, 17))  # fmt: skip
    da = xr.DataArray(imgs, dims=("band", "y", "x"))
    init = models.Gaussian2D(3, 8, 7, 2.0, 1.4, 0.2)
    for fitter in ("trf", "levmar"):
        b = fit(da, init, ("x", "y"), fitter=fitter)
        ref = fit(da, init, ("x", "y"), engine="loop", fitter=fitter)
        assert_bar(b, ref, init.param_names)


@pytest.mark.parametrize("fitter", ["trf", "levmar"])
def test_synthetic_bounds_fixed_tied(fitter):
    cube, truth = gaussian_cube(ny=6, nx=8, nchan=61, n_components=2, seed=11)
    model = components_model(2, continuum=False)
    model.stddev_0.bounds = (0.5, 1.15)  # active for part of the map
    model.mean_1.bounds = (None, 3.5)
    b = fit(cube, model, fitter=fitter)
    ref = fit(cube, model, engine="loop", fitter=fitter)
    assert_bar(b, ref, model.param_names)
    ok = b.fit_status.values < Status.SINGULAR
    assert np.all(b.stddev_0.values[ok] <= 1.15) and np.all(b.mean_1.values[ok] <= 3.5)
    assert np.mean(b.stddev_0.values[ok] > 1.15 - 1e-6) > 0.2  # TRF stays strictly inside
    fixed = components_model(2, continuum=False)
    fixed.stddev_1.fixed = True
    b = fit(cube, fixed, fitter=fitter)
    ref = fit(cube, fixed, engine="loop", fitter=fitter)
    assert_bar(b, ref, fixed.param_names)
    np.testing.assert_array_equal(b.stddev_1.values, 1.4)
    tied = components_model(2, continuum=False)
    tied.stddev_1.tied = lambda m: m.stddev_0
    # astropy's analytic Jacobian drops tied columns; finite differences honour the tie
    b = fit(cube, tied, fitter=fitter, fitter_kwargs={"estimate_jacobian": True})
    ref = fit(cube, tied, engine="loop", fitter=fitter, fitter_kwargs={"estimate_jacobian": True})
    assert_bar(b, ref, tied.param_names)
    np.testing.assert_array_equal(b.stddev_1.values, b.stddev_0.values)


# --------------------------------------------------------------------------- status
@pytest.mark.parametrize("fitter", ["trf", "levmar"])
def test_status_of_degenerate_fits_agrees(fitter):
    v = np.linspace(-12, 12, 61)
    rng = np.random.default_rng(5)
    spectra = np.stack(
        [
            np.zeros_like(v),  # nothing to fit
            rng.normal(0, 0.1, v.size),  # pure noise
            2 * np.exp(-0.5 * ((v - 1) / 1.3) ** 2) + rng.normal(0, 0.05, v.size),
        ]
    )
    da = xr.DataArray(spectra, dims=("pos", "velocity"), coords={"velocity": v})
    model = models.Gaussian1D(1.0, 0.0, 2.0)
    b, ref = fit(da, model, fitter=fitter), fit(da, model, engine="loop", fitter=fitter)
    # zeros: both fits end with an amplitude of 0 up to rounding, where the mean and
    # width columns of J vanish; the rank rule calls that SINGULAR when the rounding
    # gives exactly 0 (the batched engine) and not when it gives 1e-16 (scipy's SVD)
    assert abs(ref.amplitude.values[0]) < 1e-12
    assert b.fit_status.values[0] == ref.fit_status.values[0] or (
        b.fit_status.values[0] == Status.SINGULAR and ref.fit_status.values[0] in CONVERGED
    )
    np.testing.assert_array_equal(b.fit_status.values[1:], ref.fit_status.values[1:])
    good = (b.fit_status.values < Status.SINGULAR) & (ref.fit_status.values < Status.SINGULAR)
    np.testing.assert_allclose(b.fit_chi2.values[good], ref.fit_chi2.values[good], rtol=1e-6)
    # the iteration limit: the same status and the same number of evaluations
    b = fit(da, model, fitter=fitter, fitter_kwargs={"maxiter": 3})
    ref = fit(da, model, engine="loop", fitter=fitter, fitter_kwargs={"maxiter": 3})
    assert b.fit_status.values[2] == ref.fit_status.values[2] == Status.MAX_ITERATIONS
    np.testing.assert_array_equal(b.fit_status.values[1:], ref.fit_status.values[1:])
    np.testing.assert_array_equal(b.fit_nfev.values[1:], ref.fit_nfev.values[1:])
    np.testing.assert_allclose(b.fit_chi2.values[1:], ref.fit_chi2.values[1:], rtol=1e-6)
