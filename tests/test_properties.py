"""Invariants of modelfit, checked on random shapes, dim orders, chunkings, dtypes and NaNs.

Profiles: ``ci`` (default, bounded time) and ``long`` (``HYPOTHESIS_PROFILE=long``).
"""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xarray_modelfit import Status, modelfit

settings.register_profile(
    "ci", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ENGINES = ["loop", "batched"]
MODEL = models.Gaussian1D(2.0, 0.0, 1.5)
PARAMS = MODEL.param_names


@st.composite
def cubes(draw, dtypes=("float64",)):
    """A (a, b, chan) cube of noisy Gaussians, random sizes, dtype and NaN pattern."""
    a = draw(st.integers(1, 4))
    b = draw(st.integers(1, 5))
    nchan = draw(st.integers(12, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from(dtypes))
    rng = np.random.default_rng(seed)
    v = np.linspace(-8, 8, nchan)
    amp = rng.uniform(1, 3, (a, b, 1))
    mean = rng.uniform(-2, 2, (a, b, 1))
    std = rng.uniform(0.8, 2.0, (a, b, 1))
    data = amp * np.exp(-0.5 * ((v - mean) / std) ** 2) + rng.normal(0, 0.05, (a, b, nchan))
    n_nan = draw(st.integers(0, 6))
    for _ in range(n_nan):
        data[rng.integers(a), rng.integers(b), rng.integers(nchan)] = np.nan
    if draw(st.booleans()):
        data[rng.integers(a), rng.integers(b), :] = np.nan  # one empty spectrum
    if np.dtype(dtype).kind == "i":  # integer data (FITS int16): scaled, no NaN possible
        data = np.nan_to_num(data * 1000, nan=0.0)
    da = xr.DataArray(
        data.astype(dtype),
        dims=("a", "b", "v"),
        coords={"v": v, "a": np.arange(a), "b": np.arange(b)},
    )
    return da


def fit(da, engine, **kw):
    return modelfit(da, MODEL, "v", engine=engine, scheduler="synchronous", **kw)


def assert_same(r1, r2, rtol=0.0):
    for name in (*PARAMS, "fit_chi2", "fit_status", "fit_npoints"):
        x, y = r1[name].transpose(*r2[name].dims), r2[name]
        if rtol:
            xr.testing.assert_allclose(x, y, rtol=rtol, atol=1e-10)
        else:
            xr.testing.assert_identical(x, y)


@pytest.mark.parametrize("engine", ENGINES)
@given(da=cubes(dtypes=("float64", "float32", "int16")), data=st.data())
def test_dask_input_equals_numpy_input(engine, da, data):
    base = fit(da, engine)
    chunks = {"a": data.draw(st.integers(1, 4)), "b": data.draw(st.integers(1, 5))}
    lazy = fit(da.chunk(chunks), engine, chunk_n_max=data.draw(st.integers(1, 20)))
    assert_same(lazy, base)


@pytest.mark.parametrize("engine", ENGINES)
@given(da=cubes(), order=st.permutations(["a", "b", "v"]))
def test_transposing_does_not_change_results(engine, da, order):
    assert_same(fit(da.transpose(*order), engine), fit(da, engine), rtol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
@given(da=cubes())
def test_reversing_the_coordinate_does_not_change_results(engine, da):
    flipped = da.isel(v=slice(None, None, -1))
    assert_same(fit(flipped, engine), fit(da, engine), rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
@given(da=cubes(), data=st.data())
def test_nan_in_one_spectrum_never_changes_another(engine, da, data):
    base = fit(da, engine)
    i = data.draw(st.integers(0, da.sizes["a"] - 1))
    j = data.draw(st.integers(0, da.sizes["b"] - 1))
    k = data.draw(st.integers(0, da.sizes["v"] - 1))
    spoiled = da.copy()
    spoiled[i, j, k] = np.nan
    res = fit(spoiled, engine)
    others = np.ones((da.sizes["a"], da.sizes["b"]), bool)
    others[i, j] = False
    for name in (*PARAMS, "fit_chi2", "fit_status"):
        np.testing.assert_array_equal(res[name].values[others], base[name].values[others])


@given(da=cubes())
def test_batched_engine_agrees_with_loop_engine(da):
    loop, batched = fit(da, "loop"), fit(da, "batched")
    ok = (loop.fit_status.values == Status.CONVERGED) & (
        batched.fit_status.values == Status.CONVERGED
    )
    np.testing.assert_array_equal(
        loop.fit_status.values >= Status.SKIPPED_TOO_FEW_POINTS,
        batched.fit_status.values >= Status.SKIPPED_TOO_FEW_POINTS,
    )
    if ok.any():
        assert np.all(batched.fit_chi2.values[ok] <= loop.fit_chi2.values[ok] * (1 + 1e-6) + 1e-12)
        for name in PARAMS:
            np.testing.assert_allclose(
                batched[name].values[ok], loop[name].values[ok], rtol=1e-4, atol=1e-6
            )


def test_dask_config_untouched():
    """modelfit sets chunk sizes only inside its own call."""
    before = dask.config.get("array.chunk-size")
    fit(xr.DataArray(np.ones((2, 20)), dims=("a", "v")), "loop")
    assert dask.config.get("array.chunk-size") == before
