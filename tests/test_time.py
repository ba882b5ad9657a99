"""Time axes: datetime64 and cftime coordinates as a float world axis.

References are independent of the package: numpy least squares for the
HISTALP harmonic regression, ``cftime.date2num`` / numpy datetime arithmetic
for the world axes.
"""

from __future__ import annotations

import datetime
import warnings

import astropy.units as u
import cftime
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.modeling import models

import xarray_modelfit
from xarray_modelfit import ModelFitError, TimeAxis, modelfit
from xarray_modelfit.coords import world_inputs
from xarray_modelfit.io import load_result, save_result

TIGHT = {"acc": 1e-12, "maxiter": 1000}
YEAR = 365.25  # days; astropy's "yr" is the Julian year


def annual_model(frequency: float):
    """Const + trend (intercept fixed at 0: it duplicates the constant) + fixed-period sine."""
    return (
        models.Const1D(0.0)
        + models.Linear1D(slope=0.0, intercept=0.0, fixed={"intercept": True})
        + models.Sine1D(amplitude=5.0, frequency=frequency, phase=0.1, fixed={"frequency": True})
    )


def harmonic_lstsq(t: np.ndarray, y: np.ndarray, frequency: float) -> np.ndarray:
    """Least squares of ``c0 + c1 t + a sin(2 pi f t) + b cos(2 pi f t)``: (4, n) for (m, n) y."""
    design = harmonic_design(t, frequency)
    coef, *_ = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)
    return coef


def harmonic_design(t: np.ndarray, frequency: float) -> np.ndarray:
    arg = 2 * np.pi * frequency * t
    return np.stack([np.ones_like(t), t, np.sin(arg), np.cos(arg)], axis=1)


def check_harmonic(res: xr.Dataset, coef: np.ndarray, rtol: float = 1e-6) -> None:
    """The fitted Const1D + Linear1D + Sine1D equals the linear least-squares solution.

    ``A sin(2 pi f t + 2 pi phi) = a sin + b cos`` with ``a = A cos(2 pi phi)`` and
    ``b = A sin(2 pi phi)``: comparing ``a`` and ``b`` removes the sign / 2 pi
    ambiguity of (A, phi).
    """
    amp = res["amplitude_2"].values.ravel()
    phase = 2 * np.pi * res["phase_2"].values.ravel()
    np.testing.assert_allclose(res["amplitude_0"].values.ravel(), coef[0], rtol=rtol)
    np.testing.assert_allclose(res["slope_1"].values.ravel(), coef[1], rtol=rtol)
    np.testing.assert_allclose(np.abs(amp), np.hypot(coef[2], coef[3]), rtol=rtol)
    scale = np.hypot(coef[2], coef[3])
    np.testing.assert_allclose(amp * np.cos(phase), coef[2], rtol=rtol, atol=rtol * scale.max())
    np.testing.assert_allclose(amp * np.sin(phase), coef[3], rtol=rtol, atol=rtol * scale.max())
    np.testing.assert_array_equal(res["intercept_1"].values, 0.0)


@pytest.fixture(scope="module")
def histalp(histalp_path) -> xr.DataArray:
    with xr.open_dataset(histalp_path) as ds:
        return ds["temp"].load()


def days_since_first(times: np.ndarray) -> np.ndarray:
    return (times - times.min()) / np.timedelta64(1, "D")


def cells(da: xr.DataArray) -> np.ndarray:
    """(time, cell) data in the result's (lat, lon) order."""
    return da.transpose("time", "lat", "lon").values.reshape(da.sizes["time"], -1)


# --- HISTALP: annual cycle + trend on every grid cell -------------------------------------


@pytest.mark.parametrize("engine", ["loop", "auto"])
def test_histalp_annual_cycle_equals_least_squares(histalp, engine):
    res = modelfit(
        histalp,
        annual_model(1 / YEAR),
        "time",
        engine=engine,
        scheduler="synchronous",
        fitter_kwargs=TIGHT,
    )
    t = days_since_first(histalp.time.values)
    coef = harmonic_lstsq(t, cells(histalp), 1 / YEAR)
    check_harmonic(res, coef)
    assert res.attrs["engine"] == ("loop" if engine == "loop" else "batched")
    assert res.attrs["n_converged"] == 49
    assert (res.fit_npoints == 2556).all()
    # the time axis became days since the first month, recorded in the attrs
    assert res.attrs["time_origins"] == '["days since 1801-10-01T00:00:00"]'
    assert res.attrs["model_input_units"] == '["d"]'
    assert res["slope_1"].attrs["units"] == "deg_C / d"
    assert res["frequency_2"].attrs["units"] == "1 / d"
    # the fitted curve on the data's grid is the least-squares curve
    curve = harmonic_design(t, 1 / YEAR) @ coef
    ev = res.modelfit.evaluate(histalp).transpose("time", "lat", "lon")
    np.testing.assert_allclose(ev.values.reshape(curve.shape), curve, rtol=1e-6, atol=1e-6)


def test_histalp_origin_and_unit_in_years(histalp, tmp_path):
    axis = TimeAxis(origin="1900-01-01", unit="yr")
    sub = histalp.isel(lat=slice(0, 3), lon=slice(2, 4))
    res = modelfit(
        sub,
        annual_model(1.0),  # one cycle per (Julian) year
        "time",
        coords={"time": axis},
        engine="loop",
        scheduler="synchronous",
        fitter_kwargs=TIGHT,
    )
    t = (sub.time.values - np.datetime64("1900-01-01")) / np.timedelta64(1, "D") / YEAR
    coef = harmonic_lstsq(t, cells(sub), 1.0)
    check_harmonic(res, coef)
    assert res["slope_1"].attrs["units"] == "deg_C / yr"
    assert res.attrs["time_origins"] == '["yr since 1900-01-01T00:00:00"]'
    # reloaded, evaluate() rebuilds the same world axis (origin and unit)
    save_result(res, tmp_path / "years.nc")
    back = load_result(tmp_path / "years.nc")
    curve = harmonic_design(t, 1.0) @ coef
    ev = back.modelfit.evaluate(sub).transpose("time", "lat", "lon")
    np.testing.assert_allclose(ev.values.reshape(curve.shape), curve, rtol=1e-6, atol=1e-6)


def test_histalp_quantity_frequency(histalp):
    """``Sine1D(frequency=1 / (365.25 * u.day))`` fits the annual cycle in physical time."""
    sub = histalp.isel(lat=[1, 5], lon=[0, 6])
    model = (
        models.Const1D(0 * u.deg_C)
        + models.Linear1D(0 * u.deg_C / u.day, 0 * u.deg_C, fixed={"intercept": True})
        + models.Sine1D(5 * u.deg_C, 1 / (YEAR * u.day), 0.1, fixed={"frequency": True})
    )
    kwargs = {"engine": "loop", "scheduler": "synchronous", "fitter_kwargs": TIGHT}
    t = days_since_first(sub.time.values)
    res = modelfit(sub, model, "time", **kwargs)
    check_harmonic(res, harmonic_lstsq(t, cells(sub), 1 / YEAR))
    fitted = res.modelfit.to_model()
    assert fitted.slope_1.unit == u.deg_C / u.day
    assert fitted.amplitude_2.unit == u.deg_C
    # a world axis in years: the model (no input_units of its own) is fitted in years,
    # its Quantity parameters converted, so the frequency is exactly 1 / yr
    res_yr = modelfit(sub, model, "time", coords={"time": TimeAxis(unit="yr")}, **kwargs)
    check_harmonic(res_yr, harmonic_lstsq(t / YEAR, cells(sub), 1.0))
    fitted = res_yr.modelfit.to_model()
    assert fitted.slope_1.unit == u.deg_C / u.yr
    np.testing.assert_allclose(fitted.frequency_2.quantity.to_value(1 / u.yr), 1.0, rtol=1e-12)


def test_irregular_spacing(histalp):
    rng = np.random.default_rng(11)
    sub = histalp.isel(lat=[0, 3], lon=[2, 4])
    keep = np.sort(rng.choice(sub.sizes["time"], size=1500, replace=False))
    irregular = sub.isel(time=keep)
    res = modelfit(
        irregular,
        annual_model(1 / YEAR),
        "time",
        engine="loop",
        scheduler="synchronous",
        fitter_kwargs=TIGHT,
    )
    t = days_since_first(irregular.time.values)
    check_harmonic(res, harmonic_lstsq(t, cells(irregular), 1 / YEAR))
    assert (res.fit_npoints == 1500).all()


@pytest.mark.parametrize("as_cftime", [False, True], ids=["datetime64", "cftime"])
def test_missing_times_are_skipped_per_point(histalp, as_cftime):
    sub = histalp.isel(lat=[2], lon=[1, 5], time=slice(0, 600))
    times = sub.time.values
    missing = np.zeros(times.size, dtype=bool)
    missing[[0, 1, 17, 300, 301, 599]] = True  # the first time too: the origin moves
    if as_cftime:
        ymd = [(d.year, d.month, d.day) for d in pd.DatetimeIndex(times)]
        dates = [
            None if m else cftime.DatetimeGregorian(*t) for t, m in zip(ymd, missing, strict=True)
        ]
        with_gaps = np.array(dates, dtype=object)
    else:
        with_gaps = np.where(missing, np.datetime64("NaT"), times)
    data = sub.assign_coords(time=("time", with_gaps))
    res = modelfit(
        data,
        annual_model(1 / YEAR),
        "time",
        engine="loop",
        scheduler="synchronous",
        fitter_kwargs=TIGHT,
    )
    assert (res.fit_npoints == 594).all()
    assert (res.fit_dof == 594 - 4).all()
    kept = sub.isel(time=~missing)
    t = days_since_first(kept.time.values)
    check_harmonic(res, harmonic_lstsq(t, cells(kept), 1 / YEAR))
    assert res.attrs["time_origins"].startswith('["days since 1801-12-01T00:00:00')
    # the model is NaN where the time is missing, the fitted curve elsewhere
    ev = res.modelfit.evaluate(data)
    assert np.isnan(ev.isel(time=missing)).all()
    assert np.isfinite(ev.isel(time=~missing)).all()


def test_cf_encoded_numeric_time_equals_decoded(histalp_path):
    with xr.open_dataset(histalp_path, decode_times=False) as ds:
        raw = ds["temp"].isel(lat=[3], lon=[3, 4], time=slice(0, 480)).load()
    assert np.issubdtype(raw.time.dtype, np.number)
    assert "since" in raw.time.attrs["units"]
    with xr.open_dataset(histalp_path) as ds:
        decoded = ds["temp"].isel(lat=[3], lon=[3, 4], time=slice(0, 480)).load()
    kwargs = {"engine": "loop", "scheduler": "synchronous", "fitter_kwargs": TIGHT}
    a = modelfit(raw, annual_model(1 / YEAR), "time", **kwargs)
    b = modelfit(decoded, annual_model(1 / YEAR), "time", **kwargs)
    for name in a.data_vars:
        xr.testing.assert_allclose(a[name], b[name], rtol=1e-10)


# --- cftime calendars: fit, reload, evaluate ----------------------------------------------


CALENDARS = {
    "standard": 365.25,
    "noleap": 365.0,
    "360_day": 360.0,
}


def synthetic_series(calendar: str | None, n: int = 96, cells: int = 3):
    """Monthly series of ``3 + 0.002 t + A sin(2 pi t / P + 2 pi phi)`` (t in days)."""
    if calendar is None:
        times = xr.date_range("1990-01-16", periods=n, freq="MS").values + np.timedelta64(15, "D")
        t = days_since_first(times)
        period = YEAR
    else:
        times = xr.date_range(
            "1990-01-01", periods=n, freq="MS", calendar=calendar, use_cftime=True
        ).values
        t = cftime.date2num(times, f"days since {times[0].isoformat()}", calendar=calendar)
        period = CALENDARS[calendar]
    amp = np.linspace(1.5, 2.5, cells)
    phi = np.linspace(0.05, 0.2, cells)
    y = 3 + 0.002 * t[:, None] + amp * np.sin(2 * np.pi * (t[:, None] / period + phi))
    da = xr.DataArray(y, dims=("time", "cell"), coords={"time": times, "cell": np.arange(cells)})
    return da, t, period, {"amplitude": amp, "phase": phi}


@pytest.mark.parametrize("calendar", [None, "standard", "noleap", "360_day"])
@pytest.mark.parametrize("fmt", ["nc", "zarr"])
def test_evaluate_on_reloaded_result_reproduces_curve(calendar, fmt, tmp_path):
    da, t, period, truth = synthetic_series(calendar)
    res = modelfit(
        da,
        annual_model(1 / period),
        "time",
        engine="loop",
        scheduler="synchronous",
        fitter_kwargs=TIGHT,
    )
    check_harmonic(res, harmonic_lstsq(t, da.values, 1 / period), rtol=1e-7)
    if calendar is not None:
        assert res.attrs["time_origins"] == f'["days since 1990-01-01T00:00:00 ({calendar})"]'
    path = tmp_path / f"res.{fmt}"
    save_result(res, path)
    back = load_result(path)
    # on the data's own grid
    ev = back.modelfit.evaluate(da)
    np.testing.assert_allclose(ev.transpose("time", "cell").values, da.values, atol=1e-8)
    # on a finer grid (every 5 days) in the same calendar: the reference formula
    fine_t = np.arange(0.0, t[-1], 5.0)
    if calendar is None:
        fine = da.time.values[0] + (fine_t * 86400).astype("timedelta64[s]")
    else:
        fine = cftime.num2date(
            fine_t, f"days since {da.time.values[0].isoformat()}", calendar=calendar
        )
    grid = xr.DataArray(np.zeros(fine_t.size), dims="time", coords={"time": fine})
    ev_fine = back.modelfit.evaluate(grid).transpose("time", "cell")
    amp, phi = truth["amplitude"], truth["phase"]
    ref = 3 + 0.002 * fine_t[:, None] + amp * np.sin(2 * np.pi * (fine_t[:, None] / period + phi))
    np.testing.assert_allclose(ev_fine.values, ref, atol=1e-7)


@pytest.mark.parametrize(
    ("calendar", "year_days"), [("360_day", 360), ("noleap", 365), ("all_leap", 366)]
)
def test_years_on_a_calendar_with_another_year_warn(calendar, year_days):
    """``unit="yr"`` is the Julian year: on these calendars an annual cycle drifts; days do not."""
    times = xr.date_range("1990-01-01", periods=240, freq="MS", calendar=calendar, use_cftime=True)
    t = cftime.date2num(times.values, "days since 1990-01-01", calendar=calendar)
    y = 3 + 2 * np.sin(2 * np.pi * (t / year_days + 0.1))  # periodic in the calendar's year
    da = xr.DataArray(y, dims="time", coords={"time": times.values})
    fit = {"engine": "loop", "scheduler": "synchronous", "fitter_kwargs": TIGHT}
    in_years = models.Const1D(3) + models.Sine1D(2, 1, 0.1, fixed={"frequency": True})
    match = rf"'{calendar}' calendar, whose year is {year_days} days.*frequency=1 / {year_days}"
    with pytest.warns(xarray_modelfit.ModelFitWarning, match=match) as caught:
        drifted = modelfit(da, in_years, "time", coords={"time": TimeAxis(unit="yr")}, **fit)
    assert {w.filename for w in caught.list} == {__file__}  # the warning points at this line
    # the recommended way: days and the calendar's year, exact for this closed form
    in_days = models.Const1D(3) + models.Sine1D(2, 1 / year_days, 0.1, fixed={"frequency": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error", xarray_modelfit.ModelFitWarning)
        exact = modelfit(da, in_days, "time", **fit)
        drifted.modelfit.evaluate(da)  # warned once, when fitting
    np.testing.assert_allclose(float(exact.amplitude_1), 2.0, rtol=1e-9)
    np.testing.assert_allclose(float(exact.phase_1), 0.1, atol=1e-9)
    assert float(exact.fit_rsquared) > 1 - 1e-12
    assert float(drifted.fit_rsquared) < 1 - 1e-6  # the Julian-year cycle cannot follow


@pytest.mark.parametrize("calendar", [None, "standard", "proleptic_gregorian", "julian"])
def test_years_on_calendars_of_about_julian_years_do_not_warn(calendar):
    if calendar is None:
        times = xr.date_range("1990-01-01", periods=24, freq="MS").values
    else:
        times = xr.date_range(
            "1990-01-01", periods=24, freq="MS", calendar=calendar, use_cftime=True
        ).values
    da = xr.DataArray(np.arange(24.0), dims="time", coords={"time": times})
    with warnings.catch_warnings():
        warnings.simplefilter("error", xarray_modelfit.ModelFitWarning)
        (world,) = world_inputs(da, ["time"], {"time": TimeAxis(unit="yr")})
    assert world.unit == u.yr


@pytest.mark.parametrize("calendar", ["noleap", "360_day"])
def test_cftime_origin_and_unit(calendar):
    da, t, period, _ = synthetic_series(calendar, n=30, cells=1)
    axis = TimeAxis(origin="1985-03-01", unit="h")
    (world,) = world_inputs(da, ["time"], {"time": axis})
    assert world.coord == "time" and world.source == "coordinate 'time'"
    ref = cftime.date2num(da.time.values, "hours since 1985-03-01", calendar=calendar)
    np.testing.assert_allclose(world.values.values, ref, rtol=1e-14)
    assert world.unit == u.h
    assert world.time_origin == f"hours since 1985-03-01T00:00:00 ({calendar})"
    # the same origin as a cftime datetime, and CF-style "<unit> since <date>"
    origin = cftime.datetime(1985, 3, 1, calendar=calendar)
    for spec in (TimeAxis(origin=origin, unit="h"), TimeAxis(origin="hours since 1985-3-1")):
        (other,) = world_inputs(da, ["time"], {"time": spec})
        np.testing.assert_array_equal(other.values.values, world.values.values)


def test_datetime64_origins_and_resolutions():
    times = np.array(["2001-01-01T00:00", "2001-01-01T06:00", "NaT", "2001-03-01T12:00"], "M8[s]")
    da = xr.DataArray(np.arange(4.0), dims="time", coords={"time": times})
    ref_days = (times - np.datetime64("2000-01-01T00:00:00", "s")) / np.timedelta64(1, "D")
    for origin in (
        "2000-01-01",
        "2000-1-1",  # a CF spelling numpy itself does not read
        np.datetime64("2000-01-01", "D"),
        datetime.datetime(2000, 1, 1),
        "days since 2000-01-01 00:00:00",
    ):
        (world,) = world_inputs(da, ["time"], {"time": TimeAxis(origin=origin)})
        np.testing.assert_array_equal(world.values.values, ref_days)
        assert world.time_origin == "days since 2000-01-01T00:00:00"
    # an origin finer than the axis' resolution (and one out of the ns range)
    fine = np.datetime64("2000-01-01T00:00:00.250")
    (world,) = world_inputs(da, ["time"], {"time": TimeAxis(origin=fine, unit="s")})
    np.testing.assert_allclose(world.values.values, ref_days * 86400 - 0.25, rtol=1e-14)
    assert world.time_origin == "seconds since 2000-01-01T00:00:00.250"
    old = np.datetime64("1200-01-01")
    in_ns = da.assign_coords(time=times.astype("M8[ns]"))
    (world,) = world_inputs(in_ns, ["time"], {"time": TimeAxis(origin=old, unit="yr")})
    ref = (times - old) / np.timedelta64(1, "D") / YEAR
    np.testing.assert_allclose(world.values.values, ref, rtol=1e-12)
    # a 2-d time coordinate (a different time axis per pixel) works element-wise
    times2 = np.stack([times, times + np.timedelta64(1, "D")])
    da2 = xr.DataArray(
        np.zeros((2, 4)), dims=("pix", "time"), coords={"t2": (("pix", "time"), times2)}
    )
    (world,) = world_inputs(da2, ["time"], {"time": "t2"})
    np.testing.assert_array_equal(
        world.values.values[1] - world.values.values[0], [1, 1, np.nan, 1]
    )


def test_timeaxis_exported():
    assert xarray_modelfit.TimeAxis is TimeAxis
    assert "TimeAxis" in xarray_modelfit.__all__


# --- bad input ------------------------------------------------------------------------------


def _series(times) -> xr.DataArray:
    return xr.DataArray(np.ones((len(times), 2)), dims=("time", "pix"), coords={"time": times})


def test_all_nat_time_axis_names_the_coordinate():
    da = _series(np.full(12, np.datetime64("NaT"), dtype="M8[ns]"))
    with pytest.raises(ModelFitError, match="coordinate 'time' holds only NaT"):
        modelfit(da, models.Const1D(1.0), "time", engine="loop", scheduler="synchronous")
    nones = _series(np.arange(12.0)).assign_coords(when=("time", np.full(12, None, dtype=object)))
    with pytest.raises(ModelFitError, match="coordinate 'when' holds only missing times"):
        modelfit(nones, models.Const1D(1.0), "time", coords={"time": "when"}, engine="loop")


def test_unparseable_units_names_the_coordinate():
    da = _series(np.arange(12.0))
    da.time.attrs["units"] = "furlongs per fortnightly blorp"
    with pytest.raises(
        ModelFitError, match=r"coordinate 'time' attrs\['units'\] 'furlongs per fortnightly blorp'"
    ):
        modelfit(da, models.Const1D(1.0), "time", engine="loop")
    da.time.attrs["units"] = "days since the beginning"
    with pytest.raises(ModelFitError, match="coordinate 'time' has attrs\\['units'\\] 'days since"):
        modelfit(da, models.Const1D(1.0), "time", engine="loop")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"unit": "kg"}, ModelFitError, "TimeAxis unit 'kg' is not a unit of time"),
        ({"unit": "parsecs of doom"}, ModelFitError, "TimeAxis unit 'parsecs of doom' is not"),
        ({"origin": "yr since 1900-01-01", "unit": "d"}, ModelFitError, "give the unit once"),
        ({"origin": 3.5}, TypeError, "TimeAxis origin must be a date string"),
    ],
)
def test_bad_timeaxis(kwargs, error, match):
    with pytest.raises(error, match=match):
        TimeAxis(**kwargs)


def test_bad_origin_and_non_time_coordinate():
    da = _series(xr.date_range("2000-01-01", periods=12, freq="MS").values)
    with pytest.raises(ModelFitError, match="origin 'the big bang' for coordinate 'time'"):
        modelfit(da, models.Const1D(1.0), "time", coords={"time": TimeAxis(origin="the big bang")})
    noleap = _series(
        xr.date_range("2000-01-01", periods=12, freq="MS", calendar="noleap", use_cftime=True)
    )
    with pytest.raises(ModelFitError, match="not a date in the 'noleap' calendar"):
        world_inputs(noleap, ["time"], {"time": TimeAxis(origin="2001-02-29")})
    numeric = _series(np.arange(12.0))
    with pytest.raises(ModelFitError, match="coordinate 'time' is not a time axis"):
        modelfit(numeric, models.Const1D(1.0), "time", coords={"time": TimeAxis(unit="yr")})
    no_coord = numeric.drop_vars("time")
    with pytest.raises(ModelFitError, match="the data has no coordinate 'time'"):
        modelfit(no_coord, models.Const1D(1.0), "time", coords={"time": TimeAxis()})


def test_evaluate_uses_the_named_time_coordinate():
    da, t, period, _ = synthetic_series("noleap", n=48, cells=2)
    data = da.assign_coords(time=np.arange(48), valid_time=("time", da.time.values))
    res = modelfit(
        data,
        annual_model(1 / period),
        "time",
        coords={"time": TimeAxis(name="valid_time")},
        **{"engine": "loop", "scheduler": "synchronous", "fitter_kwargs": TIGHT},
    )
    np.testing.assert_allclose(res.modelfit.evaluate(data).transpose(*da.dims), da, atol=1e-8)


def test_evaluate_on_another_calendar_warns_and_the_same_calendar_does_not():
    tc = xr.date_range("2000-01-01", periods=36, freq="MS", calendar="noleap", use_cftime=True)
    days = np.asarray(cftime.date2num(list(tc), "days since 2000-01-01", calendar="noleap"), float)
    s = xr.DataArray(3 * np.sin(2 * np.pi * days / 365), dims="time", coords={"time": tc})
    fit = s.modelfit(models.Sine1D(1, 1 / 365, 0, fixed={"frequency": True}), "time",
                     scheduler="synchronous")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", xarray_modelfit.ModelFitWarning)
        same = fit.modelfit.evaluate(s)
    np.testing.assert_allclose(same.values, s.values, atol=1e-6)
    other = xr.date_range("2000-01-01", periods=36, freq="MS", calendar="360_day", use_cftime=True)
    with pytest.warns(
        xarray_modelfit.ModelFitWarning, match="'noleap' calendar, da's is in the '360_day'"
    ):
        fit.modelfit.evaluate(s.assign_coords(time=other))
