"""modelfit() with the loop engine: semantics against astropy's own fitters."""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import fitting, models

import xarray_modelfit
from xarray_modelfit import Status, modelfit
from xarray_modelfit.testing import fit_reference, gaussian_cube

SYNC = {"engine": "loop", "scheduler": "synchronous"}


def spectra_of(cube):
    """(n, m) spectra in result order (y, x) from a (velocity, y, x) cube."""
    return cube.transpose("y", "x", "velocity").values.reshape(-1, cube.sizes["velocity"])


def test_matches_astropy_fitter_per_pixel(cube):
    data, truth = cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(data, model, "velocity", **SYNC)
    ref = fit_reference(model, fitting.TRFLSQFitter(), data.velocity.values, spectra_of(data))
    for j, name in enumerate(model.param_names):
        np.testing.assert_allclose(res[name].values.ravel(), ref[:, j], rtol=1e-10)
        np.testing.assert_allclose(res[name].values, truth[name], atol=0.15)
    assert res.attrs["n_fits"] == 20 and res.attrs["n_converged"] == 20
    assert set(res.fit_status.values.ravel()) == {int(Status.CONVERGED)}
    assert res.amplitude.dims == ("y", "x")
    np.testing.assert_array_equal(res.y, data.y)


def test_accessor_equals_function(cube):
    data, _ = cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    a = data.modelfit(model, dims="velocity", **SYNC)
    b = xarray_modelfit.modelfit(data, model, dims="velocity", **SYNC)
    xr.testing.assert_identical(a, b)


def test_chi2_stderr_and_statistics(cube):
    data, _ = cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(data, model, "velocity", **SYNC)
    y = spectra_of(data)[7]
    v = data.velocity.values
    fitter = fitting.TRFLSQFitter()
    fitted = fitter(model.copy(), v, y)
    chi2 = np.sum((fitted(v) - y) ** 2)
    pos = {"y": 1, "x": 2}
    np.testing.assert_allclose(res.fit_chi2.isel(pos), chi2, rtol=1e-8)
    stderr = np.sqrt(np.diag(fitter.fit_info["param_cov"]))
    np.testing.assert_allclose(
        [res[f"{n}_stderr"].isel(pos) for n in model.param_names], stderr, rtol=1e-8
    )
    n, k = 41, 3
    np.testing.assert_allclose(res.fit_redchi2.isel(pos), chi2 / (n - k))
    np.testing.assert_allclose(res.fit_aic.isel(pos), n * np.log(chi2 / n) + 2 * k)
    np.testing.assert_allclose(res.fit_bic.isel(pos), n * np.log(chi2 / n) + k * np.log(n))
    np.testing.assert_allclose(res.fit_rsquared.isel(pos), 1 - chi2 / np.sum((y - y.mean()) ** 2))
    assert int(res.fit_npoints.isel(pos)) == 41 and int(res.fit_dof.isel(pos)) == 38
    assert int(res.fit_nfev.isel(pos)) > 0


@pytest.mark.parametrize(
    "order", [("velocity", "y", "x"), ("y", "velocity", "x"), ("x", "y", "velocity")]
)
def test_fitting_dim_in_any_position(cube, order):
    data, _ = cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    base = modelfit(data, model, "velocity", **SYNC)
    res = modelfit(data.transpose(*order), model, "velocity", **SYNC)
    for name in model.param_names:
        xr.testing.assert_allclose(res[name].transpose("y", "x"), base[name], rtol=1e-12)


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_schedulers_and_dask_input_identical(cube, scheduler):
    data, _ = cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    base = modelfit(data, model, "velocity", **SYNC)
    res = modelfit(
        data.chunk({"y": 2}), model, "velocity", engine="loop", scheduler=scheduler, chunk_n_max=3
    )
    xr.testing.assert_identical(res, base)


def test_compute_false_is_lazy_and_equal(cube):
    data, _ = cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    lazy = modelfit(data, model, "velocity", engine="loop", compute=False)
    assert lazy.amplitude.chunks is not None
    base = modelfit(data, model, "velocity", **SYNC)
    done = lazy.compute(scheduler="synchronous")
    for name in model.param_names:
        xr.testing.assert_identical(done[name], base[name])


def test_planar2d_either_dim_order():
    rng = np.random.default_rng(3)
    ny, nx, nt = 6, 7, 5
    slope_x = rng.uniform(-1, 1, nt)
    slope_y = rng.uniform(-1, 1, nt)
    inter = rng.uniform(-1, 1, nt)
    yv, xv = np.linspace(0, 2, ny), np.linspace(-1, 1, nx)
    planes = (
        inter[:, None, None] + slope_x[:, None, None] * xv + slope_y[:, None, None] * yv[:, None]
    )
    planes += rng.normal(0, 0.01, planes.shape)
    da = xr.DataArray(planes, dims=("t", "y", "x"), coords={"y": yv, "x": xv})
    model = models.Planar2D(0, 0, 0)
    a = modelfit(da, model, ("x", "y"), fitter=fitting.LinearLSQFitter(), **SYNC)
    b = modelfit(
        da.transpose("t", "x", "y"), model, ("x", "y"), fitter=fitting.LinearLSQFitter(), **SYNC
    )
    np.testing.assert_allclose(a.slope_x, slope_x, atol=0.01)
    np.testing.assert_allclose(a.slope_y, slope_y, atol=0.01)
    np.testing.assert_allclose(a.intercept, inter, atol=0.01)
    for n in model.param_names:
        np.testing.assert_allclose(a[n], b[n], rtol=1e-10)
    # swapping the dims swaps the roles of the model's x and y inputs
    c = modelfit(da, model, ("y", "x"), fitter=fitting.LinearLSQFitter(), **SYNC)
    np.testing.assert_allclose(c.slope_x, a.slope_y, rtol=1e-8)


def test_gaussian2d_over_two_dims_matches_astropy():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:15, 0:17].astype(float)
    truth = models.Gaussian2D(3, 8, 7, 2.0, 1.5, 0.3)
    images = np.stack([truth(xx, yy) * s for s in (1.0, 1.5, 0.7)]) + rng.normal(
        0, 0.02, (3, 15, 17)
    )
    da = xr.DataArray(images, dims=("band", "y", "x"))  # no coords: pixel index
    init = models.Gaussian2D(2, 7.5, 7.5, 1.8, 1.8, 0.1)
    res = modelfit(da, init, ("x", "y"), **SYNC)
    for b in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = fitting.TRFLSQFitter()(init.copy(), xx, yy, images[b])
        for n in init.param_names:
            np.testing.assert_allclose(res[n].isel(band=b), getattr(ref, n).value, rtol=1e-6)
    np.testing.assert_allclose(res.x_mean, 8, atol=0.05)


def test_nd_coordinate_varies_per_pixel():
    rng = np.random.default_rng(5)
    npix, nchan = 6, 40
    offsets = rng.uniform(-2, 2, npix)
    base = np.linspace(-10, 10, nchan)
    vel = base[None, :] + offsets[:, None]  # a different axis per pixel
    mean = rng.uniform(-1, 1, npix)
    spectra = 2 * np.exp(-0.5 * ((vel - mean[:, None]) / 1.3) ** 2)
    da = xr.DataArray(spectra, dims=("pix", "chan"), coords={"vel": (("pix", "chan"), vel)})
    res = modelfit(da, models.Gaussian1D(1.5, 0, 1), "chan", coords={"chan": "vel"}, **SYNC)
    np.testing.assert_allclose(res["mean"], mean, atol=1e-6)
    res2 = modelfit(da, models.Gaussian1D(1.5, 0, 1), "chan", coords={"chan": da.vel}, **SYNC)
    xr.testing.assert_identical(res["mean"], res2["mean"])


def test_compound_with_fixed_and_tied():
    data, truth = gaussian_cube(
        ny=3, nx=3, nchan=80, n_components=2, continuum=0.5, noise=0.02, seed=2
    )
    m = models.Gaussian1D(2, -4, 1.2) + models.Gaussian1D(2, 4, 1.2) + models.Const1D(0.5)
    m.amplitude_2.fixed = True
    m.stddev_1.tied = lambda mm: mm.stddev_0
    res = modelfit(data, m, "velocity", **SYNC)
    np.testing.assert_allclose(res.stddev_1, res.stddev_0)
    np.testing.assert_array_equal(res.amplitude_2, 0.5)
    assert np.isnan(res.amplitude_2_stderr).all() and np.isnan(res.stddev_1_stderr).all()
    assert np.isfinite(res.stddev_0_stderr).all()
    ref = fit_reference(m, fitting.TRFLSQFitter(), data.velocity.values, spectra_of(data))
    for j, name in enumerate(m.param_names):
        np.testing.assert_allclose(res[name].values.ravel(), ref[:, j], rtol=1e-8)


def test_weights_and_mask_remove_outliers(cube):
    data, truth = cube
    spoiled = data.copy()
    spoiled[20, :, :] += 50.0  # an outlier channel at the line centre region
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    bad = modelfit(spoiled, model, "velocity", **SYNC)
    assert np.abs(bad.amplitude - truth["amplitude"]).max() > 1
    mask = xr.zeros_like(spoiled.velocity, dtype=bool)
    mask[20] = True
    masked = modelfit(spoiled, model, "velocity", mask=mask, **SYNC)
    clean = modelfit(data.drop_isel(velocity=20), model, "velocity", **SYNC)
    for n in model.param_names:
        xr.testing.assert_allclose(masked[n], clean[n], rtol=1e-10)
    assert (masked.fit_npoints == 40).all()
    weights = xr.where(mask, 0.0, 1.0)
    weighted = modelfit(spoiled, model, "velocity", weights=weights, **SYNC)
    for n in model.param_names:
        xr.testing.assert_allclose(weighted[n], clean[n], rtol=1e-10)


def test_weights_match_astropy(cube):
    data, _ = cube
    rng = np.random.default_rng(9)
    w = rng.uniform(0.5, 2.0, data.shape)
    weights = data.copy(data=w)
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(data, model, "velocity", weights=weights, **SYNC)
    ref = fit_reference(
        model,
        fitting.TRFLSQFitter(),
        data.velocity.values,
        spectra_of(data),
        weights=spectra_of(weights),
    )
    np.testing.assert_allclose(res.amplitude.values.ravel(), ref[:, 0], rtol=1e-8)


def test_units_on_data_coords_and_model(cube):
    data, _ = cube  # velocity in km s-1, data in K
    model = models.Gaussian1D(2 * u.K, 0 * u.m / u.s, 1200 * u.m / u.s)
    res = modelfit(data, model, "velocity", **SYNC)
    plain = modelfit(data, models.Gaussian1D(2, 0, 1.2), "velocity", **SYNC)
    # the same fit in m/s instead of km/s: equal to the solver tolerance
    np.testing.assert_allclose(res["mean"], plain["mean"] * 1000, rtol=1e-5, atol=1e-2)
    assert res["mean"].attrs["units"] == "m / s" and res["amplitude"].attrs["units"] == "K"
    fitted = res.modelfit.to_model()
    assert fitted.mean.unit == u.m / u.s
    np.testing.assert_allclose(fitted.mean.value, res["mean"].values)
    # Quantity bounds are converted, not relabelled
    b = modelfit(data, model, "velocity", bounds={"stddev": (0.5, 1.0) * u.km / u.s}, **SYNC)
    assert float(b.stddev.max()) <= 1000 + 1e-6 and float(b.stddev.min()) >= 500 - 1e-6
    with pytest.raises(xarray_modelfit.ModelFitError, match="cannot be converted"):
        modelfit(data, models.Gaussian1D(2 * u.K, 0 * u.s, 1 * u.s), "velocity", **SYNC)


def test_plain_quantity_p0_on_data_without_units_is_converted_or_refused(cube):
    data, _ = cube
    plain = data.copy()
    plain.attrs = {}  # dimensionless data; the velocity coordinate keeps its km/s
    with pytest.raises(xarray_modelfit.ModelFitError, match="cannot be converted to the parameter"):
        modelfit(plain, models.Gaussian1D(2, 0, 1.2), "velocity", p0={"mean": 3 * u.s}, **SYNC)


def test_cf_unit_spellings_parse():
    from xarray_modelfit.units import parse_unit

    assert parse_unit("m s-1") == u.m / u.s
    assert parse_unit("degC") == u.deg_C
    assert parse_unit("degrees_north") == u.deg
    assert parse_unit("days") == u.day
    with pytest.raises(xarray_modelfit.ModelFitError, match="not a unit"):
        parse_unit("furlongs per fortnight-ish")


def test_per_pixel_p0_and_bounds(cube):
    data, truth = cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    p0 = xr.DataArray(truth["mean"], dims=("y", "x"))
    res = modelfit(data, model, "velocity", p0={"mean": p0, "amplitude": 2.5}, **SYNC)
    spectra, v = spectra_of(data), data.velocity.values
    for i, mean0 in enumerate(truth["mean"].ravel()):
        ref = fit_reference(
            models.Gaussian1D(2.5, mean0, 1.2), fitting.TRFLSQFitter(), v, spectra[i : i + 1]
        )
        np.testing.assert_allclose(res["mean"].values.ravel()[i], ref[0, 1], rtol=1e-12)
    hi = xr.DataArray(truth["stddev"] * 0.8, dims=("y", "x"))
    bnd = modelfit(data, model, "velocity", bounds={"stddev": (0.1, hi)}, **SYNC)
    assert (bnd.stddev <= hi + 1e-9).all()
    # a model with array parameters broadcast over the iterated dims, as in astropy
    arr_model = models.Gaussian1D(2.5, truth["mean"], 1.2)
    res2 = modelfit(data, arr_model, "velocity", **SYNC)
    xr.testing.assert_identical(res2["mean"], res["mean"])


def test_nan_spectra(cube):
    data, _ = cube
    d = data.copy()
    d[:, 0, 0] = np.nan  # all-NaN spectrum
    d[5:9, 1, 1] = np.nan  # partly NaN spectrum
    d[:, 2, 2] = np.nan
    d[:2, 2, 2] = 1.0  # only 2 valid points for 3 free parameters
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(d, model, "velocity", **SYNC)
    assert res.fit_status[0, 0] == Status.SKIPPED_NO_DATA
    assert res.fit_status[2, 2] == Status.SKIPPED_TOO_FEW_POINTS
    assert np.isnan(res.amplitude[0, 0]) and np.isnan(res.amplitude[2, 2])
    assert res.fit_status[1, 1] == Status.CONVERGED and int(res.fit_npoints[1, 1]) == 37
    good = np.isfinite(d[:, 1, 1].values)
    ref = fit_reference(
        model, fitting.TRFLSQFitter(), d.velocity.values[good], d[:, 1, 1].values[good][None]
    )
    np.testing.assert_allclose(res.amplitude[1, 1], ref[0, 0], rtol=1e-10)
    assert res.attrs["n_skipped"] == 2
    # the other spectra are untouched by the NaNs
    base = modelfit(data, model, "velocity", **SYNC)
    np.testing.assert_array_equal(res.amplitude[3], base.amplitude[3])
    # skipna=False: NaN points are given to the fitter, which cannot fit them
    strict = modelfit(d.isel(x=[1]), model, "velocity", skipna=False, **SYNC)
    assert strict.fit_status[1, 0] >= Status.SINGULAR


def test_failure_in_one_fit_does_not_abort(cube):
    data, _ = cube
    threshold = float(data.max("velocity").median())

    class Fussy(fitting.TRFLSQFitter):
        def __call__(self, model, x, y, **kwargs):
            if y.max() > threshold:
                raise RuntimeError("spectrum too bright")
            return super().__call__(model, x, y, **kwargs)

    res = modelfit(
        data, models.Gaussian1D(2.0, 0.0, 1.2), "velocity", fitter=Fussy(), preflight=False, **SYNC
    )
    bright = (data.max("velocity") > threshold).values
    assert bright.any() and (~bright).any()
    assert (res.fit_status.values[bright] == Status.FAILED).all()
    assert (res.fit_status.values[~bright] == Status.CONVERGED).all()
    assert np.isnan(res.amplitude.values[bright]).all()
    assert res.attrs["n_failed"] == bright.sum()
    table = res.modelfit.failures()
    assert len(table) == bright.sum() and set(table.meaning) == {"failed"}


@pytest.mark.parametrize(
    "fitter",
    [
        fitting.LevMarLSQFitter(),
        fitting.DogBoxLSQFitter(),
        fitting.LMLSQFitter(),
        fitting.SLSQPLSQFitter(),
        fitting.SimplexLSQFitter(),
    ],
    ids=lambda f: type(f).__name__,
)
def test_any_astropy_fitter(cube, fitter):
    data, _ = cube
    small = data.isel(y=[0, 1], x=[0])
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(small, model, "velocity", fitter=fitter, **SYNC)
    ref = fit_reference(model, type(fitter)(), small.velocity.values, spectra_of(small))
    np.testing.assert_allclose(res.amplitude.values.ravel(), ref[:, 0], rtol=1e-7)
    assert res.attrs["fitter"] == type(fitter).__name__


def test_dataset_input_prefixes(cube):
    data, _ = cube
    ds = xr.Dataset({"co": data, "hcn": data * 2, "mom0": data.sum("velocity")})
    res = modelfit(ds, models.Gaussian1D(2.0, 0.0, 1.2), "velocity", **SYNC)
    assert "co_amplitude" in res and "hcn_amplitude_stderr" in res and "hcn_fit_status" in res
    assert not any(k.startswith("mom0") for k in res.data_vars)
    np.testing.assert_allclose(res.hcn_amplitude, 2 * res.co_amplitude, rtol=1e-6)
    assert res.attrs["n_fits"] == 40
    fitted = res.modelfit.to_model(prefix="hcn_")
    np.testing.assert_allclose(fitted.amplitude.value, res.hcn_amplitude.values)


def test_evaluate_and_residuals(cube):
    data, _ = cube
    res = modelfit(data, models.Gaussian1D(2.0, 0.0, 1.2), "velocity", **SYNC)
    ev = res.modelfit.evaluate(data)
    assert set(ev.dims) == {"velocity", "y", "x"}
    g = models.Gaussian1D(*(float(res[n][1, 2]) for n in ("amplitude", "mean", "stddev")))
    np.testing.assert_allclose(ev.sel(y=1, x=2).values, g(data.velocity.values), rtol=1e-12)
    resid = res.modelfit.residuals(data)
    np.testing.assert_allclose((resid**2).sum("velocity"), res.fit_chi2, rtol=1e-8)
    lazy = res.chunk({"y": 2}).modelfit.evaluate(data.chunk({"y": 2}))
    assert lazy.chunks is not None
    xr.testing.assert_allclose(lazy.compute(), ev.transpose(*lazy.dims))


class Counting(fitting.TRFLSQFitter):
    calls = 0

    def __call__(self, model, x, y, **kwargs):
        type(self).calls += 1
        return super().__call__(model, x, y, **kwargs)


def test_preflight_stops_a_run_that_cannot_work(cube):
    data, _ = cube

    @models.custom_model
    def Broken(x, a=1.0):
        raise ZeroDivisionError("model cannot be evaluated")

    Counting.calls = 0
    with pytest.raises(
        xarray_modelfit.ModelFitError, match="pre-flight fit at .* raised ZeroDivisionError"
    ):
        modelfit(data, Broken(), "velocity", fitter=Counting(), **SYNC)
    assert Counting.calls == 3  # three positions tried, no full run started
    Counting.calls = 0
    res = modelfit(data, Broken(), "velocity", fitter=Counting(), preflight=False, **SYNC)
    assert Counting.calls == 20 and (res.fit_status == Status.FAILED).all()


def test_preflight_position_and_skips_empty_spectra(cube):
    data, _ = cube
    d = data.copy()
    d[:, 0, :] = np.nan  # the first positions have no data: pre-flight looks further
    Counting.calls = 0
    res = modelfit(d, models.Gaussian1D(2.0, 0.0, 1.2), "velocity", fitter=Counting(), **SYNC)
    assert Counting.calls == 15 + 1 and res.attrs["n_skipped"] == 5
    with pytest.raises(xarray_modelfit.ModelFitError, match="has too few valid points"):
        modelfit(d, models.Gaussian1D(), "velocity", preflight={"y": 0, "x": 1}, **SYNC)
    with pytest.raises(xarray_modelfit.ModelFitError, match="not iterated dims"):
        modelfit(d, models.Gaussian1D(), "velocity", preflight={"velocity": 0}, **SYNC)


def test_equivalencies_convert_wavelength_to_frequency():
    rng = np.random.default_rng(2)
    wav = np.linspace(500, 700, 60)  # nm
    freq = (wav * u.nm).to_value(u.THz, equivalencies=u.spectral())
    line = 3 * np.exp(-0.5 * ((freq - 500) / 8) ** 2) + rng.normal(0, 0.01, (2, 60))
    da = xr.DataArray(line, dims=("p", "wav"), coords={"wav": ("wav", wav, {"units": "nm"})})
    model = models.Gaussian1D(2 * u.one, 495 * u.THz, 10 * u.THz)
    with pytest.raises(xarray_modelfit.ModelFitError, match="cannot be converted"):
        modelfit(da, model, "wav", **SYNC)
    for equiv in (u.spectral(), {"x": u.spectral()}):
        res = modelfit(da, model, "wav", equivalencies=equiv, **SYNC)
        np.testing.assert_allclose(res["mean"], 500, atol=0.1)
        assert res["mean"].attrs["units"] == "THz"


def test_zero_length_fitting_dim_and_bad_scheduler(cube):
    data, _ = cube
    with pytest.raises(xarray_modelfit.ModelFitError, match="has length 0"):
        modelfit(data.isel(velocity=slice(0, 0)), models.Gaussian1D(), "velocity")
    with pytest.raises(xarray_modelfit.ModelFitError, match="scheduler must be one of"):
        modelfit(data, models.Gaussian1D(), "velocity", scheduler="turbo")


def test_array_parameters_use_the_batched_engine(cube):
    data, truth = cube
    res = modelfit(
        data, models.Gaussian1D(2.5, truth["mean"], 1.2), "velocity", scheduler="synchronous"
    )
    assert res.attrs["engine"] == "batched"


@pytest.mark.parametrize("engine", ["batched", "loop"])
@pytest.mark.parametrize(
    "make",
    [lambda: models.Legendre1D(2), lambda: models.Chebyshev1D(3), lambda: models.Hermite1D(2)],
)
def test_linear_fit_of_polynomial_without_domain_keeps_the_axis_range(engine, make):
    """astropy's LinearLSQFitter sets a missing domain to the data's range; the result keeps it."""
    x = np.linspace(1000.0, 2000.0, 80)
    rng = np.random.default_rng(2)
    y = 3 + 0.002 * (x - 1500) + 1e-6 * (x - 1500) ** 2 + rng.normal(0, 0.01, (3, x.size))
    y[1, -5:] = np.nan  # fewer valid points: the same polynomial, on the axis's domain
    data = xr.DataArray(y, dims=("pix", "x"), coords={"x": x})
    res = modelfit(data, make(), "x", fitter=fitting.LinearLSQFitter(), engine=engine,
                   scheduler="synchronous")  # fmt: skip
    fitted = res.modelfit.to_model()
    assert tuple(fitted.domain) == (1000.0, 2000.0)
    curve = res.modelfit.evaluate(data)
    for i in range(3):
        ok = np.isfinite(y[i])
        ref = fitting.LinearLSQFitter()(make(), x[ok], y[i, ok])
        np.testing.assert_allclose(curve.values[i], ref(x), rtol=1e-9)
    assert (res.fit_status == Status.CONVERGED).all()


def test_tied_parameters_engines_agree_with_finite_differences():
    """astropy's analytic Jacobian leaves out the tie; the batched engine's chain rule does not.

    With finite differences both engines solve the same problem and agree; with the analytic
    Jacobian the batched chi2 is never worse, and here strictly better on one fit, matching
    scipy's least_squares on the model with the tie written in.
    """
    from scipy.optimize import least_squares

    x = np.linspace(-10, 10, 121)

    def two(x, a0, m0, s0, a1, m1, s1):
        return a0 * np.exp(-0.5 * ((x - m0) / s0) ** 2) + a1 * np.exp(-0.5 * ((x - m1) / s1) ** 2)

    truth = np.array(
        [[2, -3, 1.0, 1.2, 3, 1.5], [1.5, -2, 0.8, 2.0, 4, 1.0], [3, -4, 1.2, 0.5, 2, 2]]
    )
    y = np.stack([two(x, *p) for p in truth]) + np.random.default_rng(0).normal(
        0, 0.05, (3, x.size)
    )
    data = xr.DataArray(y, dims=("pix", "v"), coords={"v": x})
    model = models.Gaussian1D(1.5, -3, 1, bounds={"stddev": (0.1, 1.1)}) + models.Gaussian1D(
        1.5, 3, 1
    )
    model.stddev_1.tied = lambda m: m.stddev_0
    kw = {"scheduler": "synchronous"}
    fd = {"fitter_kwargs": {"estimate_jacobian": True}}
    loop_fd = modelfit(data, model, "v", engine="loop", **fd, **kw)
    batched_fd = modelfit(data, model, "v", engine="batched", **fd, **kw)
    np.testing.assert_allclose(batched_fd.fit_chi2, loop_fd.fit_chi2, rtol=1e-6)
    loop = modelfit(data, model, "v", engine="loop", **kw)
    batched = modelfit(data, model, "v", engine="batched", **kw)
    assert (batched.fit_chi2 <= loop.fit_chi2 * (1 + 1e-6)).all()
    lo, hi = [-np.inf, -np.inf, 0.1, -np.inf, -np.inf], [np.inf, np.inf, 1.1, np.inf, np.inf]
    for i in range(3):
        ref = least_squares(
            lambda p, yi=y[i]: two(x, *p, p[2]) - yi, [1.5, -3, 1, 1.5, 3], bounds=(lo, hi)
        )
        np.testing.assert_allclose(float(batched.fit_chi2[i]), 2 * ref.cost, rtol=1e-5)


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_fits_that_end_on_a_bound_are_counted(engine):
    """Lines outside the allowed mean range pin the mean on the bound; the others do not."""
    cube, truth = gaussian_cube(ny=2, nx=6, nchan=61, seed=7)
    model = models.Gaussian1D(2.0, 0.0, 1.5, bounds={"mean": (-0.8, 0.8)})
    res = modelfit(cube, model, "velocity", engine=engine, scheduler="synchronous")
    outside = np.abs(truth["mean"]) > 0.9
    inside = np.abs(truth["mean"]) < 0.7
    assert outside.sum() >= 4 and inside.sum() >= 4
    on_edge = np.isclose(np.abs(res["mean"].values), 0.8, rtol=1e-6)
    np.testing.assert_array_equal(res.fit_at_bound.values, on_edge.astype(int))
    assert (res.fit_at_bound.values[outside] == 1).all()
    assert (res.fit_at_bound.values[inside] == 0).all()
    free = modelfit(cube, models.Gaussian1D(2.0, 0.0, 1.5), "velocity", engine=engine,
                    scheduler="synchronous")  # fmt: skip
    assert (free.fit_at_bound == 0).all()


def test_at_bound_is_relative_to_the_interval_and_missing_without_a_fit():
    """On a GHz axis with kHz channels a line one channel inside its bound is not on it."""
    f = 1.42e9 + 1e3 * np.arange(41)
    y = 2.0 * np.exp(-0.5 * ((f - 1.42e9 - 10e3) / 3e3) ** 2)
    data = xr.DataArray(np.stack([y, y, np.full_like(y, np.nan)]), dims=("pix", "f"),
                        coords={"f": f})  # fmt: skip
    model = models.Gaussian1D(
        1.8, 1.42e9 + 12e3, 2.5e3, bounds={"mean": (1.42e9 + 9e3, 1.42e9 + 40e3)}
    )
    res = modelfit(data, model, "f", scheduler="synchronous")
    np.testing.assert_allclose(res["mean"][:2], 1.42e9 + 10e3, atol=1.0)  # 1 Hz of a 1 kHz channel
    assert res.fit_at_bound.values.tolist() == [0, 0, -1]


def test_batched_engine_splits_an_in_memory_cube_one_slab_per_core(monkeypatch):
    """Equal slabs along the longest iterated dim, one per core (at least 1000 fits each),
    unless chunk_n_max is given; the result does not depend on the split."""
    import xarray_modelfit.fit as fit_module

    rng = np.random.default_rng(5)
    v = np.linspace(-5, 5, 30)
    y = 2 * np.exp(-0.5 * ((v[:, None, None] - 0.2) / 0.9) ** 2) + rng.normal(0, 0.1, (30, 20, 300))
    data = xr.DataArray(y, dims=("velocity", "y", "x"), coords={"velocity": v})
    model = models.Gaussian1D(1.5, 0.0, 1.0)
    monkeypatch.setattr(fit_module, "_cores", lambda: 3)
    lazy = modelfit(data, model, "velocity", compute=False)
    assert lazy.amplitude.chunksizes["x"] == (100, 100, 100)
    assert lazy.amplitude.chunksizes["y"] == (20,)
    one = modelfit(data, model, "velocity", chunk_n_max=20_000, compute=False)
    assert one.amplitude.chunksizes["x"] == (300,)
    small = modelfit(data.isel(x=slice(0, 60)), model, "velocity", compute=False)
    assert small.amplitude.chunksizes["x"] == (60,)  # 1200 fits: one chunk
    a, b = lazy.compute(scheduler="threads"), one.compute(scheduler="synchronous")
    xr.testing.assert_identical(a.amplitude, b.amplitude)
