"""p0="auto": initial values from the data."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.modeling import custom_model, models

from xarray_modelfit import ModelFitError, modelfit, peak_stats, register_guess
from xarray_modelfit.kernel.block import FitBlock
from xarray_modelfit.kernel.guess import GUESSES, axis_bounds, guess_block
from xarray_modelfit.testing import gaussian_cube


def block_of(x, y, model):
    n, m = y.shape
    P = len(model.param_names)
    return FitBlock(
        x=x if isinstance(x, tuple) else (x[None, :],),
        y=y,
        valid=np.isfinite(y),
        weights=None,
        p0=np.tile(model.parameters, (n, 1)),
        lower=np.full((n, P), -np.inf),
        upper=np.full((n, P), np.inf),
        active=np.ones(n, bool),
        index=np.zeros((n, 0), int),
    )


def test_peak_stats_of_a_gaussian_are_its_moments():
    x = np.linspace(-10, 10, 401)
    y = np.stack(
        [3.0 * np.exp(-0.5 * ((x - 1.5) / 0.8) ** 2), 2.0 * np.exp(-0.5 * ((x + 4) / 2.0) ** 2)]
    )
    amp, center, fwhm = peak_stats(x[None, :], y)
    np.testing.assert_allclose(amp, [3.0, 2.0], rtol=1e-3)
    np.testing.assert_allclose(center, [1.5, -4.0], atol=0.03)
    np.testing.assert_allclose(fwhm, 2.3548 * np.array([0.8, 2.0]), rtol=0.01)
    # descending coordinates give the same answer
    amp2, center2, fwhm2 = peak_stats(x[None, ::-1], y[:, ::-1])
    np.testing.assert_allclose([amp2, center2, fwhm2], [amp, center, fwhm], rtol=1e-6)


@pytest.mark.parametrize(
    "truth",
    [
        models.Gaussian1D(2.5, 1.0, 1.3),
        models.Lorentz1D(2.5, 1.0, 2.0),
        models.Moffat1D(2.5, 1.0, 1.5, 2.0),
        models.Voigt1D(1.0, 2.5, 1.2, 1.5),
    ],
    ids=lambda m: type(m).__name__,
)
def test_single_peak_guesses_are_close(truth):
    x = np.linspace(-12, 12, 241)
    y = truth(x)[None, :]
    guess = guess_block(block_of(x, y, truth), truth)[0]
    model = truth.copy()
    model.parameters = guess
    # the guessed profile is within 15% of the peak everywhere
    assert np.max(np.abs(model(x) - truth(x))) < 0.15 * truth(x).max()


def test_sum_of_peaks_and_baseline():
    x = np.linspace(-12, 12, 200)
    truth = models.Gaussian1D(2, 4, 1) + models.Gaussian1D(3, -3, 1.5) + models.Linear1D(0.05, 0.5)
    y = truth(x)[None, :]
    start = models.Gaussian1D(1, 0, 1) + models.Gaussian1D(1, 0, 1) + models.Linear1D(0, 0)
    g = guess_block(block_of(x, y, start), start)[0]
    names = start.param_names
    # components ordered by position: component 0 is the leftmost line
    np.testing.assert_allclose(g[names.index("mean_0")], -3, atol=0.15)
    np.testing.assert_allclose(g[names.index("mean_1")], 4, atol=0.15)
    np.testing.assert_allclose(g[names.index("amplitude_0")], 3, rtol=0.2)
    np.testing.assert_allclose(g[names.index("slope_2")], 0.05, atol=0.03)
    np.testing.assert_allclose(g[names.index("intercept_2")], 0.5, atol=0.2)


def test_gaussian2d_image_moments():
    yy, xx = np.mgrid[0:30, 0:40].astype(float)
    truth = models.Gaussian2D(3, 22, 12, 4, 2, 0.4)
    img = truth(xx, yy).ravel()[None, :]
    start = models.Gaussian2D()
    block = block_of((xx.ravel()[None, :], yy.ravel()[None, :]), img, start)
    g = dict(zip(start.param_names, guess_block(block, start)[0], strict=True))
    np.testing.assert_allclose([g["x_mean"], g["y_mean"]], [22, 12], atol=0.05)
    np.testing.assert_allclose(g["theta"], 0.4, atol=0.02)
    np.testing.assert_allclose(sorted([g["x_stddev"], g["y_stddev"]]), [2, 4], rtol=0.05)


def test_fixed_parameters_keep_their_values():
    x = np.linspace(-5, 5, 50)
    start = models.Gaussian1D(1, 0, 0.7)
    start.stddev.fixed = True
    g = guess_block(block_of(x, models.Gaussian1D(2, 1, 1)(x)[None, :], start), start)[0]
    assert g[2] == 0.7 and abs(g[1] - 1) < 0.2


@pytest.mark.parametrize("chunked", [False, True])
def test_auto_p0_fits_two_lines_and_continuum(chunked):
    cube, truth = gaussian_cube(ny=6, nx=7, nchan=80, n_components=2, continuum=0.5, seed=3)
    if chunked:
        cube = cube.chunk({"y": 2})
    m = models.Gaussian1D(1, 0, 1) + models.Gaussian1D(1, 0, 1) + models.Const1D(0)
    res = modelfit(cube, m, "velocity", p0="auto", scheduler="threads", compute=not chunked)
    if chunked:
        assert res["mean_0"].chunks is not None
        res = res.compute()
    for name, value in truth.items():
        np.testing.assert_allclose(res[name], value, atol=0.15, err_msg=name)
    # the same start point everywhere fails for many pixels
    bad = modelfit(cube.compute(), m, "velocity", scheduler="threads")
    assert np.abs(bad["mean_0"] - truth["mean_0"]).max() > 1


def test_register_guess_for_a_custom_model():
    @custom_model
    def Step(x, height=1.0, edge=0.0):
        return height * (x > edge)

    x = np.linspace(-5, 5, 101)
    da = xr.DataArray(np.stack([2 * (x > 1.0), 3 * (x > -2.0)]), dims=("pix", "x"), coords={"x": x})
    with pytest.raises(ModelFitError, match="no guess for"):
        modelfit(da, Step(), "x", p0="auto", engine="loop", scheduler="synchronous")

    @register_guess(Step)
    def _step(xs, y):
        height = np.nanmax(y, axis=1)
        first = np.argmax(y > height[:, None] / 2, axis=1)
        return {
            "height": height,
            "edge": np.broadcast_to(xs[0], y.shape)[np.arange(len(y)), first] - 0.05,
        }

    try:
        res = modelfit(
            da,
            Step(),
            "x",
            p0="auto",
            engine="loop",
            scheduler="synchronous",
            fitter=__import__("astropy.modeling.fitting", fromlist=["x"]).SimplexLSQFitter(),
        )
        np.testing.assert_allclose(res.height, [2, 3], rtol=1e-3)
    finally:
        GUESSES.pop(Step, None)


def test_bad_p0_string(cube):
    data, _ = cube
    with pytest.raises(ModelFitError, match="or 'auto'"):
        modelfit(data, models.Gaussian1D(), "velocity", p0="guess")
    with pytest.raises(ModelFitError, match="combines them with"):
        modelfit(data, models.Gaussian1D() * models.Const1D(), "velocity", p0="auto")


# --- bounds="auto" ---------------------------------------------------------------------------
def test_axis_bounds_of_a_sum_of_peaks():
    model = (
        models.Gaussian1D(1, 0, 1)
        + models.Gaussian1D(1, 0, 1, bounds={"mean": (-1, 1)}, fixed={"stddev": True})
        + models.Lorentz1D()
        + models.Const1D()
    )
    got = axis_bounds(model, [-5.0], [7.0], [0.5])
    assert got == {
        "mean_0": (-5.0, 7.0),
        "stddev_0": (0.25, 12.0),
        "x_0_2": (-5.0, 7.0),
        "fwhm_2": (0.25, 12.0),
    }  # the user's mean_1 bounds and the fixed stddev_1 are kept; amplitudes stay open
    plane = axis_bounds(models.Gaussian2D(), [0.0, 10.0], [20.0, 30.0], [1.0, 2.0])
    assert plane["y_mean"] == (10.0, 30.0) and plane["y_stddev"] == (1.0, 20.0)
    assert "amplitude" not in plane and "theta" not in plane


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_bounds_auto_keeps_lines_on_the_axis_and_flags_them(engine):
    """A line centred beyond the band (a ramp in the data) runs off without bounds; with
    bounds="auto" its centre stays on the axis edge and fit_at_bound says so. Lines inside the
    band fit as without bounds."""
    v = np.linspace(-10, 10, 41)
    centres = np.array([-2.0, 3.0, 14.0, 1.0])
    amps = np.array([2.0, 1.5, 3.0, 1.2])
    rng = np.random.default_rng(3)
    y = amps[:, None] * np.exp(-0.5 * ((v - centres[:, None]) / 2.0) ** 2)
    cube = xr.DataArray(y + rng.normal(0, 0.02, y.shape), dims=("pix", "v"), coords={"v": v})
    kw = {"engine": engine, "scheduler": "synchronous", "p0": "auto"}
    free = modelfit(cube, models.Gaussian1D(), "v", **kw)
    auto = modelfit(cube, models.Gaussian1D(), "v", bounds="auto", **kw)
    assert free["mean"].values[2] > 10.0  # the optimum is beyond the axis
    assert auto["mean"].values[2] == pytest.approx(10.0, rel=1e-6)
    assert auto.fit_at_bound.values.tolist() == [0, 0, 1, 0]
    inside = [0, 1, 3]
    np.testing.assert_allclose(auto["mean"].values[inside], centres[inside], atol=0.05)
    np.testing.assert_allclose(auto.amplitude.values[inside], amps[inside], atol=0.05)
    np.testing.assert_allclose(auto["mean"].values[inside], free["mean"].values[inside], rtol=1e-6)
    with pytest.raises(ModelFitError, match="or 'auto', got 'automatic'"):
        modelfit(cube, models.Gaussian1D(), "v", bounds="automatic", scheduler="synchronous")


def test_bounds_auto_leaves_other_parameters_and_their_starts_alone():
    """Fixed or user-bounded parameters keep their values; only starts on a bound move, by a step."""
    v = np.linspace(0.0, 1999.0, 2000)  # 1-channel steps
    y = 3.0 * np.exp(-0.5 * ((v - 800.0) / 1.5) ** 2)
    cube = xr.DataArray(np.stack([y, y + 0.5]), dims=("pix", "v"), coords={"v": v})
    model = models.Gaussian1D(2.5, 0.0, 1.4) + models.Const1D(0.0, bounds={"amplitude": (0, 10)})
    model.amplitude_1.fixed = True
    fit = modelfit(cube, model, "v", bounds="auto", p0={"mean_0": 801.0}, scheduler="synchronous")
    assert (fit["amplitude_1"] == 0.0).all()  # fixed at 0, on its own bound: not moved
    np.testing.assert_allclose(fit["mean_0"][0], 800.0, rtol=1e-9)
    np.testing.assert_allclose(fit["stddev_0"][0], 1.5, rtol=1e-6)
    assert int(fit["fit_nfev"][0]) < 15  # the 1.4-channel width start was inside: not moved far


def test_bounds_auto_steps_along_the_fitting_dim_of_an_nd_coordinate():
    ch = np.arange(40.0)
    lam = xr.DataArray(5000.0 + ch[None, :] + 0.001 * np.arange(3)[:, None], dims=("fibre", "ch"))
    y = 2.0 * np.exp(-0.5 * ((lam - 5020.0) / 0.4) ** 2)  # narrower than one channel: on the bound
    cube = y.assign_coords(lam=lam)
    fit = modelfit(cube, models.Gaussian1D(2.0, 5020.0, 1.0), "ch", coords={"ch": "lam"},
                   bounds="auto", scheduler="synchronous")  # fmt: skip
    np.testing.assert_allclose(fit["stddev"], 0.5, rtol=1e-6)  # half of the 1-channel step
    assert (fit.fit_at_bound == 1).all()


def test_bounds_auto_on_a_model_it_does_not_know_warns():
    import xarray_modelfit

    cube, _ = gaussian_cube(1, 2, 30)
    with pytest.warns(xarray_modelfit.ModelFitWarning, match="bounds='auto' bounds nothing"):
        modelfit(cube, models.Polynomial1D(1), "velocity", bounds="auto", scheduler="synchronous")
