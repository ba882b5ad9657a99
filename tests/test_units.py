"""Units of the data and the world inputs: data without units, Quantity coordinates.

References are independent of the package: astropy's ``parallel_fit_dask`` (with
``data_unit=u.one``, the dimensionless data this package assumes for data without
units), astropy fitters called per spectrum, and the cube's known true parameters.
"""

from __future__ import annotations

import json

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import fitting, models
from astropy.modeling.fitting import parallel_fit_dask

import xarray_modelfit
from xarray_modelfit import ModelFitError, modelfit
from xarray_modelfit.testing import fit_reference, gaussian_cube

SYNC = {"engine": "loop", "scheduler": "synchronous"}
KMS = u.km / u.s


@pytest.fixture(scope="module")
def plain_cube():
    """A cube whose velocity coordinate has units (km/s) and whose data has none."""
    data, truth = gaussian_cube(ny=3, nx=4, nchan=41, seed=2)
    data.attrs = {}
    return data, truth


def spectra_of(cube: xr.DataArray) -> np.ndarray:
    return cube.transpose("y", "x", "velocity").values.reshape(-1, cube.sizes["velocity"])


def test_data_without_units_is_dimensionless_like_parallel_fit_dask(plain_cube):
    data, truth = plain_cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    res = modelfit(data, model, "velocity", **SYNC)
    # maps get the coordinate's unit; the amplitude of dimensionless data has none
    assert res["mean"].attrs["units"] == "km / s"
    assert res["stddev"].attrs["units"] == "km / s"
    assert res["mean_stderr"].attrs["units"] == "km / s"
    assert "units" not in res["amplitude"].attrs
    assert res.attrs["model_has_units"] == 1
    # astropy's parallel fitter on the same numbers, data_unit=u.one
    ref = parallel_fit_dask(
        data=data.values,
        model=model,
        fitter=fitting.TRFLSQFitter(),
        fitting_axes=0,
        world=(data.velocity.values * KMS,),
        data_unit=u.one,
        scheduler="synchronous",
    )
    assert ref.mean.unit == KMS
    for name in ("amplitude", "mean", "stddev"):
        np.testing.assert_allclose(res[name].values, getattr(ref, name).value, rtol=1e-7)
    np.testing.assert_allclose(res["mean"].values, truth["mean"], atol=0.1)
    fitted = res.modelfit.to_model()
    assert fitted.mean.unit == KMS and fitted.amplitude.unit in (None, u.one)


def test_plain_model_takes_quantity_p0_and_bounds_on_data_without_units(plain_cube):
    data, truth = plain_cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    # Quantities are converted to the coordinate's unit (km/s), not relabelled
    res = modelfit(
        data,
        model,
        "velocity",
        p0={"mean": 500 * u.m / u.s},
        bounds={"stddev": (900, 1300) * u.m / u.s, "mean": (None, 5 * KMS)},
        **SYNC,
    )
    assert res["stddev"].attrs["units"] == "km / s"
    assert float(res["stddev"].max()) <= 1.3 + 1e-9 and float(res["stddev"].min()) >= 0.9 - 1e-9
    # the same bounds in plain numbers of km/s give the same fit
    same = modelfit(
        data,
        model,
        "velocity",
        p0={"mean": 0.5},
        bounds={"stddev": (0.9, 1.3), "mean": (None, 5.0)},
        **SYNC,
    )
    for name in ("amplitude", "mean", "stddev"):
        np.testing.assert_allclose(res[name].values, same[name].values, rtol=1e-12)
    # independent: astropy's fitter per spectrum with the bounds in km/s
    ref_model = models.Gaussian1D(2.0, 0.5, 1.2, bounds={"stddev": (0.9, 1.3), "mean": (None, 5)})
    ref = fit_reference(ref_model, fitting.TRFLSQFitter(), data.velocity.values, spectra_of(data))
    np.testing.assert_allclose(res["stddev"].values.ravel(), ref[:, 2], rtol=1e-6)
    np.testing.assert_allclose(res["mean"].values.ravel(), ref[:, 1], rtol=1e-6, atol=1e-9)


def test_quantity_p0_in_units_the_coordinate_cannot_take(plain_cube):
    data, _ = plain_cube
    with pytest.raises(ModelFitError, match=r"p0\['mean'\] has units s, which cannot be conv"):
        modelfit(data, models.Gaussian1D(2, 0, 1.2), "velocity", p0={"mean": 3 * u.s}, **SYNC)
    # on the pixel index (no units anywhere) the model stays in plain numbers
    pixels = data.drop_vars("velocity")
    with pytest.raises(ModelFitError, match=r"p0\['mean'\] is a Quantity in km / s, but the par"):
        modelfit(pixels, models.Gaussian1D(2, 20, 3), "velocity", p0={"mean": 3 * KMS}, **SYNC)
    res = modelfit(pixels, models.Gaussian1D(2, 20, 3), "velocity", **SYNC)
    assert "units" not in res["mean"].attrs and res.attrs["model_has_units"] == 0


def test_evaluate_converts_a_grid_in_other_units(plain_cube):
    data, _ = plain_cube
    res = modelfit(data, models.Gaussian1D(2.0, 0.0, 1.2), "velocity", **SYNC)
    v_ms = np.linspace(-12_000, 12_000, 97)
    grid = xr.DataArray(
        np.zeros(v_ms.size),
        dims="velocity",
        coords={"velocity": ("velocity", v_ms, {"units": "m/s"})},
    )
    ev = res.modelfit.evaluate(grid).transpose("y", "x", "velocity")
    amp, mean, std = (res[n].values[..., None] for n in ("amplitude", "mean", "stddev"))
    closed_form = amp * np.exp(-0.5 * ((v_ms / 1000 - mean) / std) ** 2)
    np.testing.assert_allclose(ev.values, closed_form, rtol=1e-12, atol=1e-12)
    assert float(ev.max()) > 1.0  # not a model evaluated 1000 line widths away


def test_evaluate_needs_the_coordinate_the_fit_used(plain_cube):
    data, _ = plain_cube
    res = modelfit(data, models.Gaussian1D(2.0, 0.0, 1.2), "velocity", **SYNC)
    bare = xr.DataArray(np.zeros(41), dims="velocity")
    with pytest.raises(ModelFitError, match=r"da has no coordinate 'velocity'.*coordinate 'vel"):
        res.modelfit.evaluate(bare)
    with pytest.raises(ModelFitError, match=r"without the fitting dim 'velocity'"):
        res.modelfit.evaluate(xr.DataArray(np.zeros(41), dims="channel"))
    # a fit on an array: the grid must say where its points are
    arr = modelfit(
        data,
        models.Gaussian1D(2.0, 0.0, 1.2),
        "velocity",
        coords={"velocity": data.velocity.values},
    )
    with pytest.raises(ModelFitError, match=r"was coords\['velocity'\] array, not the pixel"):
        arr.modelfit.evaluate(bare)
    # a fit on another coordinate: that one, or the dim's own, is needed
    vrad = data.assign_coords(vrad=("velocity", data.velocity.values, {"units": "km/s"}))
    named = modelfit(
        vrad, models.Gaussian1D(2.0, 0.0, 1.2), "velocity", coords={"velocity": "vrad"}, **SYNC
    )
    with pytest.raises(ModelFitError, match=r"no coordinate 'vrad' or 'velocity' along"):
        named.modelfit.evaluate(bare)
    xr.testing.assert_identical(
        named.modelfit.evaluate(vrad).drop_vars("vrad"), res.modelfit.evaluate(data)
    )
    assert "units" not in res.modelfit.evaluate(data).attrs  # dimensionless data
    # a fit on the pixel index evaluates on the pixel index
    pixels = data.drop_vars("velocity")
    on_pixels = modelfit(pixels, models.Gaussian1D(2, 20, 3), "velocity", **SYNC)
    ev = on_pixels.modelfit.evaluate(bare).transpose("y", "x", "velocity")
    amp, mean, std = (on_pixels[n].values[..., None] for n in ("amplitude", "mean", "stddev"))
    k = np.arange(41.0)
    np.testing.assert_allclose(ev.values, amp * np.exp(-0.5 * ((k - mean) / std) ** 2), rtol=1e-12)


@pytest.mark.parametrize("model_units", [False, True], ids=["plain", "quantity"])
def test_quantity_coordinate_in_other_units(model_units):
    data, truth = gaussian_cube(ny=2, nx=3, nchan=41, seed=3)  # velocity in km/s, data in K
    v_ms = data.velocity.values * 1000 * u.m / u.s
    if model_units:
        model = models.Gaussian1D(2 * u.K, 0 * KMS, 1.2 * KMS)
    else:
        model = models.Gaussian1D(2.0, 0.0, 1.2)
    labelled = modelfit(data, model, "velocity", **SYNC)
    if not model_units:
        model = models.Gaussian1D(2.0, 0.0, 1200.0)  # plain numbers in the array's m/s
    res = modelfit(data, model, "velocity", coords={"velocity": v_ms}, **SYNC)
    assert json.loads(res.attrs["world_sources"]) == ["coords['velocity'] array"]
    # the same fit: a plain model is fitted in m/s, a Quantity model in its own km/s
    scale = 1.0 if model_units else 1000.0
    unit = "km / s" if model_units else "m / s"
    assert res["mean"].attrs["units"] == unit and res["amplitude"].attrs["units"] == "K"
    np.testing.assert_allclose(res["amplitude"], labelled["amplitude"], rtol=1e-6)
    np.testing.assert_allclose(res["mean"], labelled["mean"] * scale, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res["stddev"], labelled["stddev"] * scale, rtol=1e-6)
    np.testing.assert_allclose(labelled["mean"], truth["mean"], atol=0.1)
    # a DataArray wrapping a Quantity keeps its unit too
    wrapped = xr.DataArray(v_ms, dims="velocity")
    again = modelfit(data, model, "velocity", coords={"velocity": wrapped}, **SYNC)
    assert again["mean"].attrs["units"] == unit
    np.testing.assert_allclose(again["mean"], res["mean"], rtol=1e-12)


def test_quantity_coordinate_must_be_1d():
    data, _ = gaussian_cube(ny=2, nx=2, nchan=11)
    two_d = np.zeros((11, 2)) * KMS
    with pytest.raises(ModelFitError, match=r"coords\['velocity'\] is a 2-d array; a plain arr"):
        modelfit(data, models.Gaussian1D(), "velocity", coords={"velocity": two_d})


def test_accessor_uses_the_same_units(plain_cube):
    data, _ = plain_cube
    model = models.Gaussian1D(2.0, 0.0, 1.2)
    a = data.modelfit(model, "velocity", bounds={"mean": (-5, 5) * KMS}, **SYNC)
    b = xarray_modelfit.modelfit(data, model, "velocity", bounds={"mean": (-5, 5) * KMS}, **SYNC)
    xr.testing.assert_identical(a, b)


def test_unparseable_data_units_are_a_label_for_a_model_without_units():
    import xarray_modelfit

    cube, truth = gaussian_cube(ny=1, nx=3, nchan=41)
    plain = modelfit(cube.assign_attrs(units=None), models.Gaussian1D(2, 0, 1.2), "velocity",
                     scheduler="synchronous")  # fmt: skip
    salty = cube.assign_attrs(units="psu")
    with pytest.warns(
        xarray_modelfit.ModelFitWarning, match="'psu' is not a unit .* plain numbers"
    ):
        res = modelfit(salty, models.Gaussian1D(2, 0, 1.2), "velocity", scheduler="synchronous")
    np.testing.assert_allclose(res.amplitude, plain.amplitude, rtol=1e-12)
    np.testing.assert_allclose(res.amplitude, truth["amplitude"], atol=0.15)
    with pytest.raises(ModelFitError, match="'furlongs-ish' is not a unit"):
        modelfit(cube, models.Gaussian1D(2, 0, 1.2), "velocity", data_unit="furlongs-ish")
    quantity_model = models.Gaussian1D(2 * u.K, 0 * u.km / u.s, 1.2 * u.km / u.s)
    with pytest.raises(ModelFitError, match="'psu' is not a unit"):
        modelfit(salty, quantity_model, "velocity", scheduler="synchronous")


def test_cf_dimensionless_spellings():
    from xarray_modelfit.units import parse_unit

    assert parse_unit("ppm").to(u.one) == pytest.approx(1e-6)
    assert parse_unit("ppbv").to(u.one) == pytest.approx(1e-9)
    assert parse_unit("dimensionless") == u.dimensionless_unscaled
