"""Every status code, provoked under each engine."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from astropy.modeling import custom_model, fitting, models

from xarray_modelfit import Status, modelfit
from xarray_modelfit.testing import gaussian_cube

V = np.linspace(-5, 5, 30)
LINE = 2 * np.exp(-0.5 * ((V - 0.5) / 1.1) ** 2) + np.random.default_rng(3).normal(0, 0.01, 30)


def run(spectrum, engine, model=None, **kwargs):
    da = xr.DataArray(np.atleast_2d(spectrum), dims=("p", "v"), coords={"v": V})
    res = modelfit(
        da, model or models.Gaussian1D(1.5, 0.0, 1.0), "v", engine=engine,
        scheduler="synchronous", preflight=False, **kwargs,
    )  # fmt: skip
    return Status(int(res.fit_status[0]))


class Warns(fitting.TRFLSQFitter):
    def __call__(self, model, x, y, **kwargs):
        warnings.warn("a warning from the fitter", stacklevel=2)
        return super().__call__(model, x, y, **kwargs)


@custom_model
def Fragile(x, amplitude=1.0, mean=0.0, stddev=1.0):
    """A Gaussian that raises once its amplitude passes 50 (reached only while fitting)."""
    if np.any(np.asarray(amplitude) > 50):
        raise ValueError("amplitude above 50")
    return amplitude * np.exp(-0.5 * ((x - mean) / stddev) ** 2)


@pytest.mark.parametrize("engine", ["loop", "batched"])
def test_each_status_code(engine):
    assert run(LINE, engine) == Status.CONVERGED
    if engine == "loop":
        assert run(LINE, engine, fitter=Warns()) == Status.CONVERGED_WITH_WARNINGS
    # a start whose convergence tests pass at once (scipy's absolute gtol on ~1e-30 data)
    tiny = run(LINE * 1e-30, engine, model=models.Gaussian1D(1.5e-30, 0.0, 1.0))
    assert tiny == Status.CONVERGED_WITH_WARNINGS
    assert run(LINE, engine, fitter_kwargs={"maxiter": 2}) == Status.MAX_ITERATIONS
    nan = LINE.copy()
    nan[4] = np.nan
    assert run(nan, engine, skipna=False) == Status.SINGULAR
    assert run(LINE * 100, engine, model=Fragile(1.0, 0.0, 1.0)) == Status.FAILED
    assert run(LINE[:2].tolist() + [np.nan] * 28, engine) == Status.SKIPPED_TOO_FEW_POINTS
    assert run(np.full(30, np.nan), engine) == Status.SKIPPED_NO_DATA
    assert run(LINE, engine, mask=np.ones(30, bool)) == Status.SKIPPED_MASKED


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_huge_data_is_flagged_with_advice(engine):
    """A Gaussian cube x 1e20 with a start on that scale: astropy's fitters and the batched
    engine can both stop at wrong parameters while reporting convergence; every fit is
    flagged (its message says to rescale). The same cube unscaled converges cleanly."""
    cube, _ = gaussian_cube(ny=2, nx=3, nchan=40)
    plain = modelfit(cube, models.Gaussian1D(2, 0, 1.2), "velocity", engine=engine,
                     scheduler="synchronous")  # fmt: skip
    assert (plain.fit_status == Status.CONVERGED).all()
    big = modelfit(cube * 1e20, models.Gaussian1D(2e20, 0, 1.2), "velocity", engine=engine,
                   scheduler="synchronous", preflight=False)  # fmt: skip
    assert (big.fit_status == Status.CONVERGED_WITH_WARNINGS).all()
