"""Results to netCDF / zarr and back; the model in the attrs; open_cube and its errors.

A reloaded result must be read by plain xarray, hold no pickles or object arrays,
and still give ``to_model()`` and ``evaluate()``: checked against the result
before saving and against astropy models built by hand.
"""

from __future__ import annotations

import json
import shutil

import astropy.units as u
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.modeling import custom_model, fix_inputs, models
from astropy.utils.exceptions import AstropyDeprecationWarning

from xarray_modelfit import ModelFitError, Status, modelfit
from xarray_modelfit.io import load_result, open_cube, save_result
from xarray_modelfit.serialize import model_from_json, model_to_json
from xarray_modelfit.testing import gaussian_cube

SYNC = {"engine": "loop", "scheduler": "synchronous"}
FORMATS = ["nc", "zarr"]


def two_lines_with_units():
    """Two Gaussians + a fixed continuum, a tie and bounds, all in Quantities."""
    kms = u.km / u.s
    model = (
        models.Gaussian1D(2 * u.K, -4 * kms, 1.2 * kms)
        + models.Gaussian1D(2 * u.K, 4 * kms, 1.2 * kms)
        + models.Const1D(0.5 * u.K)
    )
    model.amplitude_2.fixed = True
    model.stddev_1.tied = lambda m: m.stddev_0
    model.stddev_0.bounds = (0.2 * kms, 5 * kms)
    return model


@pytest.fixture(scope="module")
def cube():
    data, _ = gaussian_cube(ny=3, nx=4, nchan=60, n_components=2, continuum=0.5, seed=4)
    return data


@pytest.fixture(scope="module")
def result(cube):
    return modelfit(cube, two_lines_with_units(), "velocity", covariance=True, **SYNC)


def hand_built(res: xr.Dataset, y: int, x: int):
    """The fitted model at one pixel, built with astropy from the maps and their units."""
    q = {
        n: float(res[n][y, x]) * u.Unit(res[n].attrs["units"])
        for n in json.loads(res.attrs["param_names"])
    }
    return (
        models.Gaussian1D(q["amplitude_0"], q["mean_0"], q["stddev_0"])
        + models.Gaussian1D(q["amplitude_1"], q["mean_1"], q["stddev_1"])
        + models.Const1D(q["amplitude_2"])
    )


def assert_plain_arrays(ds: xr.Dataset) -> None:
    """No pickled or Python-object data: numbers, booleans, strings, datetimes only."""
    for name, var in ds.variables.items():
        if var.dtype == object:
            assert all(isinstance(v, str) for v in np.asarray(var.values).flat), name
        else:
            assert var.dtype.kind in "biufSUTM", (name, var.dtype)


@pytest.mark.parametrize("fmt", FORMATS)
def test_roundtrip_identical_and_usable(result, cube, fmt, tmp_path):
    path = tmp_path / f"result.{fmt}"
    save_result(result, path)
    back = load_result(path)
    xr.testing.assert_identical(back.load(), result)
    # plain xarray reads it too
    plain = xr.open_zarr(path) if fmt == "zarr" else xr.open_dataset(path)
    xr.testing.assert_identical(plain.load(), result)
    assert_plain_arrays(plain)
    plain.close()
    # CF flags survive
    flags = back.fit_status.attrs
    np.testing.assert_array_equal(flags["flag_values"], [int(s) for s in Status])
    assert flags["flag_meanings"].split() == [
        "converged",
        "converged_with_warnings",
        "max_iterations",
        "singular_or_nonfinite",
        "failed",
        "skipped_too_few_points",
        "skipped_no_data",
        "skipped_masked",
    ]
    assert json.loads(back.attrs["tied_params"]) == ["stddev_1"]
    # to_model: the same parameters, with units
    before, after = result.modelfit.to_model(), back.modelfit.to_model()
    assert after.param_names == before.param_names
    for name in before.param_names:
        p, q = getattr(before, name), getattr(after, name)
        assert q.unit == p.unit, name
        np.testing.assert_array_equal(q.value, p.value)
    assert after.mean_0.unit == u.km / u.s and after.amplitude_2.unit == u.K
    # evaluate: equal to the result before saving and to a hand-built astropy model
    ev = back.modelfit.evaluate(cube)
    xr.testing.assert_identical(ev, result.modelfit.evaluate(cube))
    v = cube.velocity.values * u.km / u.s
    ref = hand_built(result, 1, 2)(v)
    np.testing.assert_allclose(ev.isel(y=1, x=2).values, ref.to_value(u.K), rtol=1e-12)
    np.testing.assert_allclose(
        (back.modelfit.residuals(cube) ** 2).sum("velocity"), result.fit_chi2, rtol=1e-8
    )


def test_serialize_compound_fixed_tied_units():
    model = two_lines_with_units()
    text = model_to_json(model)
    json.loads(text)  # plain JSON text
    rebuilt = model_from_json(text)
    assert rebuilt.param_names == model.param_names
    for name in model.param_names:
        p, q = getattr(model, name), getattr(rebuilt, name)
        assert q.unit == p.unit and q.value == p.value, name
        assert q.fixed == p.fixed, name
        assert q.bounds == p.bounds, name
    assert rebuilt.amplitude_2.fixed
    # the tie is recorded, not rebuilt: the rebuilt model takes the value it is given
    node = json.loads(text)
    assert node["left"]["right"]["params"]["stddev"]["tied"] is True
    assert not rebuilt.stddev_1.tied
    v = np.linspace(-10, 10, 21) * u.km / u.s
    np.testing.assert_array_equal(rebuilt(v).to_value(u.K), model(v).to_value(u.K))


@pytest.mark.parametrize(
    "model",
    [
        models.Polynomial1D(3, domain=(0, 10), window=(-1, 1), c0=1, c1=-2, c3=0.5),
        models.Chebyshev2D(2, 1, x_domain=(0, 5), c0_0=1, c1_0=2, c2_1=0.3),
        models.Legendre1D(2, c2=1.5),
        models.Mapping((0, 0)) | models.Gaussian2D(1, 0.5, -0.5, 1, 2, 0.3),
        fix_inputs(models.Gaussian2D(2, 0, 1, 1, 2), {"y": 0.5}),
        models.Voigt1D(0.5, 2, 0.3, 0.4),
        models.Sine1D(2, 0.1, 0.25) * models.Exponential1D(1, 20) - models.Const1D(0.5),
    ],
    ids=lambda m: m.name or type(m).__name__,
)
def test_serialize_rebuilds_settings(model):
    rebuilt = model_from_json(model_to_json(model))
    x = np.linspace(0.1, 4.9, 13)
    args = (x,) if model.n_inputs == 1 else (x, x[::-1])
    np.testing.assert_allclose(rebuilt(*args), model(*args), rtol=1e-14)


def test_serialize_errors():
    @custom_model
    def local_line(x, a=1.0):
        return a * x

    text = model_to_json(local_line(2.0))
    with pytest.raises(ModelFitError, match="not importable here"):
        model_from_json(text)
    with pytest.raises(ModelFitError, match="not valid JSON"):
        model_from_json("{not json")
    # a setting the constructor does not take back is not stored: rebuilding says so
    with pytest.warns(AstropyDeprecationWarning):
        voigt = models.Voigt1D(method="humlicek2")
    with pytest.raises(ModelFitError, match=r"Voigt1D: its settings \['method'\]"):
        model_from_json(model_to_json(voigt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_dataset_input_result_roundtrip(cube, fmt, tmp_path):
    ds = xr.Dataset({"co": cube, "hcn": cube * 2})
    ds["hcn"].attrs = cube.attrs
    model = models.Gaussian1D(2.0, -4.0, 1.2) + models.Gaussian1D(2.0, 4.0, 1.2)
    res = modelfit(ds, model, "velocity", **SYNC)
    assert "hcn_amplitude_0" in res and "co_fit_status" in res
    save_result(res, tmp_path / f"ds.{fmt}")
    back = load_result(tmp_path / f"ds.{fmt}")
    xr.testing.assert_identical(back.load(), res)
    for prefix in ("co_", "hcn_"):
        fitted = back.modelfit.to_model(prefix=prefix)
        np.testing.assert_array_equal(fitted.mean_1.value, res[f"{prefix}mean_1"].values)
        ev = back.modelfit.evaluate(ds[prefix[:-1]], prefix=prefix)
        xr.testing.assert_identical(ev, res.modelfit.evaluate(ds[prefix[:-1]], prefix=prefix))


@pytest.mark.parametrize("fmt", FORMATS)
def test_dataset_variables_keep_their_own_units(cube, fmt, tmp_path):
    """``to_model`` / ``evaluate`` with a prefix use that variable's units, also reloaded."""
    ds = xr.Dataset({"co": cube, "flux": (cube * 30).assign_attrs(units="Jy")})
    model = models.Gaussian1D(2.0, -4.0, 1.2) + models.Gaussian1D(2.0, 4.0, 1.2)
    res = modelfit(ds, model, "velocity", **SYNC)
    assert res.attrs["co_model_data_units"] == "K" and res.attrs["flux_model_data_units"] == "Jy"
    assert "model_data_units" not in res.attrs  # the variables disagree: no shared value
    assert res.attrs["model_input_units"] == '["km / s"]'  # they agree on the coordinate
    save_result(res, tmp_path / f"units.{fmt}")
    back = load_result(tmp_path / f"units.{fmt}")
    xr.testing.assert_identical(back.load(), res)
    v = cube.velocity.values * u.km / u.s
    for name, unit in (("co", u.K), ("flux", u.Jy)):
        # each variable fitted alone is the reference
        alone = modelfit(ds[name], model, "velocity", **SYNC)
        fitted = back.modelfit.to_model(prefix=f"{name}_")
        assert fitted.amplitude_1.unit == unit and fitted.mean_1.unit == u.km / u.s
        np.testing.assert_array_equal(fitted.amplitude_1.value, alone["amplitude_1"].values)
        ev = back.modelfit.evaluate(ds[name], prefix=f"{name}_")
        assert ev.attrs["units"] == unit.to_string()
        xr.testing.assert_identical(ev.compute(), alone.modelfit.evaluate(ds[name]).compute())
        # against astropy: the model built by hand from the maps, evaluated in Quantities
        q = {p: float(alone[p][1, 2]) * u.Unit(alone[p].attrs["units"]) for p in model.param_names}
        by_hand = models.Gaussian1D(
            q["amplitude_0"], q["mean_0"], q["stddev_0"]
        ) + models.Gaussian1D(q["amplitude_1"], q["mean_1"], q["stddev_1"])
        np.testing.assert_allclose(ev.isel(y=1, x=2).values, by_hand(v).to_value(unit), rtol=1e-12)


def test_lazy_model_and_residual_cubes_to_zarr(result, cube, tmp_path):
    eager = result.modelfit.evaluate(cube)
    # a chunked result gives a lazy model cube, written chunk by chunk
    lazy = result.chunk({"y": 2}).modelfit.evaluate(cube.chunk({"y": 2}))
    assert lazy.chunks is not None
    save_result(lazy, tmp_path / "model.zarr")
    xr.testing.assert_identical(xr.open_dataarray(tmp_path / "model.zarr", engine="zarr"), eager)
    # the residual cube, lazily through save_result, from a lazily reloaded result
    save_result(result, tmp_path / "result.zarr")
    back = load_result(tmp_path / "result.zarr")
    assert back.amplitude_0.chunks is not None
    resid = back.modelfit.residuals(cube.chunk({"y": 1}))
    assert resid.chunks is not None
    save_result(resid, tmp_path / "resid.zarr")
    stored = xr.open_zarr(tmp_path / "resid.zarr")["residual"]
    xr.testing.assert_identical(stored.load(), result.modelfit.residuals(cube))


def test_evaluate_of_chunked_data_is_lazy(result, cube, tmp_path):
    lazy = result.modelfit.evaluate(cube.chunk({"y": 2, "x": 2}))
    assert lazy.chunks is not None
    lazy.to_zarr(tmp_path / "model.zarr")
    xr.testing.assert_identical(
        xr.open_dataarray(tmp_path / "model.zarr", engine="zarr"),
        result.modelfit.evaluate(cube),
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_histalp_result_roundtrip(histalp_path, fmt, tmp_path):
    temp = open_cube(histalp_path, "temp")
    assert temp.chunks is not None and np.issubdtype(temp.time.dtype, np.datetime64)
    model = models.Const1D(0.0) + models.Sine1D(8.0, 1 / 365.25, 0.0, fixed={"frequency": True})
    res = modelfit(temp, model, "time", engine="auto")
    save_result(res, tmp_path / f"histalp.{fmt}")
    back = load_result(tmp_path / f"histalp.{fmt}")
    xr.testing.assert_identical(back.load(), res)
    assert json.loads(back.attrs["time_origins"]) == ["days since 1801-10-01T00:00:00"]
    assert back.amplitude_1.attrs["units"] == "deg_C"
    fitted = back.modelfit.to_model()
    assert fitted.frequency_1.unit == 1 / u.day
    ev = back.modelfit.evaluate(temp)
    xr.testing.assert_identical(ev.compute(), res.modelfit.evaluate(temp).compute())


def test_evaluate_on_a_subset_of_pixels(result, cube):
    sub = cube.isel(y=[0, 2], x=[1])
    ev = result.modelfit.evaluate(sub)
    xr.testing.assert_identical(ev, result.modelfit.evaluate(cube).isel(y=[0, 2], x=[1]))


def test_result_variables_carry_only_their_own_units(result):
    assert "units" not in result.fit_status.attrs
    assert "units" not in result.fit_chi2.attrs
    assert result.amplitude_0.attrs["units"] == "K"
    assert result.mean_0.attrs["units"] == "km / s"


# --- open_cube and bad files ----------------------------------------------------------------


def test_open_cube_formats(histalp_path, tmp_path):
    temp = open_cube(histalp_path)  # the first variable with 2+ dims
    assert temp.name == "temp" and temp.dims == ("time", "lat", "lon")
    prcp = open_cube(histalp_path, "prcp")
    assert prcp.name == "prcp"
    # a netCDF file whose name does not say so is recognised by its contents
    odd = tmp_path / "histalp.data"
    shutil.copy(histalp_path, odd)
    xr.testing.assert_identical(open_cube(odd, "temp").load(), temp.load())
    # zarr
    save_result(temp, tmp_path / "temp.zarr")
    xr.testing.assert_identical(open_cube(tmp_path / "temp.zarr").load(), temp.load())


def test_open_cube_errors_name_the_file(histalp_path, tmp_path):
    missing = tmp_path / "nope.nc"
    with pytest.raises(FileNotFoundError, match=r"nope\.nc: no such file"):
        open_cube(missing)
    unknown = tmp_path / "notes.txt"
    unknown.write_text("just some text\n")
    with pytest.raises(ModelFitError, match=r"notes\.txt: unknown file type"):
        open_cube(unknown)
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"\x00\x01not a netcdf file at all" * 20)
    with pytest.raises(ModelFitError, match=r"garbage\.nc: cannot be read as netcdf"):
        open_cube(garbage)
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(histalp_path.read_bytes()[:3000])
    with pytest.raises(ModelFitError, match=r"truncated\.nc: cannot be read as netcdf"):
        open_cube(truncated)
    with pytest.raises(ModelFitError, match=r"HISTALP_oetztal\.nc: no data variable 'tas'"):
        open_cube(histalp_path, "tas")
    flat = tmp_path / "flat.nc"
    xr.Dataset({"v": ("x", np.arange(3.0))}).to_netcdf(flat)
    with pytest.raises(ModelFitError, match=r"flat\.nc: no data variable with 2 or more dims"):
        open_cube(flat)
    with pytest.raises(FileNotFoundError, match=r"gone\.zarr: no such file"):
        load_result(tmp_path / "gone.zarr")


def test_save_result_refuses_what_it_cannot_store(result, tmp_path):
    with pytest.raises(ModelFitError, match=r"result\.csv: unknown file type"):
        save_result(result, tmp_path / "result.csv")
    objects = result.assign(bad=("y", np.array([object(), {}, []], dtype=object)))
    with pytest.raises(ModelFitError, match="variable 'bad' holds Python objects"):
        save_result(objects, tmp_path / "objects.nc")
    dict_attr = result.assign_attrs(extra={"a": 1})
    with pytest.raises(ModelFitError, match=r"attrs\['extra'\] of the Dataset is a dict"):
        save_result(dict_attr, tmp_path / "attrs.zarr")


def test_evaluate_with_duplicate_labels_on_an_iterated_dim():
    """Repeated station ids or epochs: positions match by place when the labels are the data's."""
    cube, truth = gaussian_cube(ny=1, nx=4, nchan=41)
    cube = cube.isel(y=0).assign_coords(x=[10, 10, 20, 30])
    res = cube.modelfit(models.Gaussian1D(2, 0, 1.2), "velocity", scheduler="synchronous")
    curve = res.modelfit.evaluate(cube)
    v = cube.velocity.values[None, :]
    ref = res.amplitude.values[:, None] * np.exp(
        -0.5 * ((v - res["mean"].values[:, None]) / res.stddev.values[:, None]) ** 2
    )
    np.testing.assert_allclose(curve.transpose("x", "velocity").values, ref, rtol=1e-12)
    resid = res.modelfit.residuals(cube)
    np.testing.assert_allclose(
        resid.transpose("x", "velocity").values, cube.T.values - ref, rtol=1e-9, atol=1e-12
    )


def _gauss(amplitude, mean, stddev, x):
    return amplitude * np.exp(-0.5 * ((x - mean) / stddev) ** 2)


def test_evaluate_uses_the_pixel_index_when_the_fit_did():
    """A coordinate da gained after a fit on the pixel index is not the fit's world input."""
    pix = np.arange(41.0)
    data = xr.DataArray(_gauss(1.0, 20.0, 3.0, pix) * np.array([[1.0], [2.0]]), dims=("row", "v"))
    res = data.modelfit(models.Gaussian1D(1, 18, 2), "v", scheduler="synchronous")
    assert json.loads(res.attrs["world_sources"]) == ["pixel index along 'v'"]
    labelled = data.assign_coords(v=np.linspace(-5, 5, 41))  # same grid, labelled in km/s
    curve = res.modelfit.evaluate(labelled)
    ref = _gauss(
        res.amplitude.values[:, None], res["mean"].values[:, None], res.stddev.values[:, None], pix
    )
    np.testing.assert_allclose(curve.transpose("row", "v").values, ref, rtol=1e-12)
    np.testing.assert_allclose(res["mean"].values, 20.0, atol=1e-6)
    np.testing.assert_array_equal(curve.v.values, labelled.v.values)  # da's coordinate is kept
    assert float(abs(res.modelfit.residuals(labelled)).max()) < 1e-6


@pytest.fixture(scope="module")
def repeated():
    """Four spectra whose labels repeat: 1, 1, 2, 3 (amplitudes 1 to 4)."""
    v = np.linspace(-5, 5, 41)
    data = xr.DataArray(
        np.stack([a * np.exp(-0.5 * v**2) for a in (1.0, 2.0, 3.0, 4.0)]),
        dims=("pix", "v"),
        coords={"pix": [1, 1, 2, 3], "v": v},
    )
    return data, data.modelfit(models.Gaussian1D(1, 0, 1), "v", scheduler="synchronous")


def test_evaluate_subset_by_label_where_the_labels_are_unique(repeated):
    data, res = repeated
    sub = data.isel(pix=[3, 2])  # labels 3, 2: each one fit
    curve = res.modelfit.evaluate(sub)
    ref = _gauss(np.array([[4.0], [3.0]]), 0.0, 1.0, data.v.values)  # the true amplitudes
    np.testing.assert_allclose(curve.transpose("pix", "v").values, ref, rtol=1e-8, atol=1e-12)
    assert curve.pix.values.tolist() == [3, 2]


def test_evaluate_refuses_repeated_or_unknown_labels(repeated):
    data, res = repeated
    for sub in [data.isel(pix=[1]), data.isel(pix=[3, 2, 1, 0])]:  # a subset, a reordering
        with pytest.raises(
            ModelFitError,
            match=r"da's labels along 'pix' are not the result's, and some of them \(\[1\]\) "
            "label more than one fitted position",
        ):
            res.modelfit.residuals(sub)
    other = data.isel(pix=[3]).assign_coords(pix=[99])
    with pytest.raises(
        ModelFitError, match=r"da has 'pix' labels the result has no fit for: \[99\]"
    ):
        res.modelfit.evaluate(other)


def test_evaluate_of_a_time_axis_fit_needs_times():
    time = pd.date_range("2000-01-01", periods=24, freq="MS")
    data = xr.DataArray(np.arange(24.0), dims="time", coords={"time": time}, attrs={"units": "K"})
    res = data.modelfit(models.Linear1D(0, 0), "time", scheduler="synchronous")
    days = [0.0, 365.0, 730.0]
    numbers = xr.DataArray(
        np.zeros(3), dims="time", coords={"time": ("time", days, {"units": "d"})}
    )
    with pytest.raises(
        ModelFitError,
        match=r"the fit's world input along 'time' was a time axis \(days since 2000-01-01"
        r"T00:00:00\), but da's coordinate 'time' along it is not times \(dtype float64\)",
    ):
        res.modelfit.evaluate(numbers)
    # numbers with CF units "days since" are times: slope per day times days, plus intercept
    cf = numbers.assign_coords(time=("time", days, {"units": "days since 2000-01-01"}))
    expected = float(res.slope) * np.array(days) + float(res.intercept)
    np.testing.assert_allclose(res.modelfit.evaluate(cf).values, expected, rtol=1e-12)
