"""Figures: parameter maps and one fit with its components and residuals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.modeling import models

import xarray_modelfit
from xarray_modelfit.testing import gaussian_cube

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")
from xarray_modelfit.plot import plot_fit, plot_maps  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def fitted():
    cube, _ = gaussian_cube(ny=4, nx=5, nchan=41, seed=1)
    result = cube.modelfit(models.Gaussian1D(2.0, 0.0, 1.2), "velocity", scheduler="synchronous")
    return cube, result


@pytest.fixture(scope="module")
def compound():
    cube, _ = gaussian_cube(ny=3, nx=4, nchan=61, n_components=2, continuum=0.5, seed=2)
    model = (
        models.Gaussian1D(2.0, -4.0, 1.3)
        + models.Gaussian1D(2.0, 4.0, 1.3, name="red")
        + models.Const1D(0.5)
    )
    result = cube.modelfit(model, "velocity", scheduler="synchronous")
    return cube, result, model


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_plot_maps_one_axes_per_parameter(fitted, tmp_path):
    _, result = fitted
    fig = plot_maps(result)
    fig.savefig(tmp_path / "maps.png")
    assert (tmp_path / "maps.png").stat().st_size > 1000
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["amplitude", "mean", "stddev"]
    labels = [cb.get_ylabel() for cb in _colorbars(fig)]
    assert labels == ["amplitude [K]", "mean [km / s]", "stddev [km / s]"]
    # the image is the map
    np.testing.assert_array_equal(
        np.ma.filled(panels[1].collections[0].get_array(), np.nan).reshape(4, 5),
        result["mean"].values,
    )


def test_plot_maps_compound_and_selection(compound, tmp_path):
    _, result, model = compound
    fig = plot_maps(result, ncols=4)
    fig.savefig(tmp_path / "maps.png")
    assert len(_panels(fig)) == len(model.param_names) == 7
    assert len(_colorbars(fig)) == 7
    assert {ax.get_title() for ax in _panels(fig)} == set(model.param_names)
    fig = plot_maps(result, ["mean_1", "mean_1_stderr", "fit_redchi2"])
    assert [ax.get_title() for ax in _panels(fig)] == ["mean_1", "mean_1_stderr", "fit_redchi2"]
    assert [cb.get_ylabel() for cb in _colorbars(fig)][:2] == [
        "mean_1 [km / s]",
        "mean_1_stderr [km / s]",
    ]


def test_plot_maps_1d_and_0d(fitted, tmp_path):
    _, result = fitted
    fig = plot_maps(result.isel(y=0))
    fig.savefig(tmp_path / "lines.png")
    assert [ax.get_ylabel() for ax in _panels(fig)] == [
        "amplitude [K]",
        "mean [km / s]",
        "stddev [km / s]",
    ]
    np.testing.assert_array_equal(
        _panels(fig)[0].lines[0].get_ydata(), result["amplitude"].isel(y=0).values
    )
    fig = plot_maps(result.isel(y=0, x=0))
    fig.savefig(tmp_path / "values.png")
    assert "K" in _panels(fig)[0].texts[0].get_text()


def test_plot_maps_dataset_fit(tmp_path):
    cube, _ = gaussian_cube(ny=2, nx=3, nchan=41, seed=4)
    ds = xr.Dataset({"co": cube, "hcn": cube * 0.5})
    result = ds.modelfit(models.Gaussian1D(1.0, 0.0, 1.2), "velocity", scheduler="synchronous")
    fig = plot_maps(result, prefix="hcn_")
    assert [ax.get_title() for ax in _panels(fig)] == ["hcn: amplitude", "hcn: mean", "hcn: stddev"]
    np.testing.assert_array_equal(
        np.ma.filled(_panels(fig)[0].collections[0].get_array(), np.nan).reshape(2, 3),
        result["hcn_amplitude"].values,
    )
    assert len(_panels(plot_maps(result))) == 3  # first variable by default


def _image(ax):
    return np.ma.filled(ax.collections[0].get_array(), np.nan).reshape(2, 3)


@pytest.fixture(scope="module")
def two_variables():
    """co and hcn = co / 2 (its fitted amplitude is half co's, the rest the same)."""
    cube, _ = gaussian_cube(ny=2, nx=3, nchan=41, seed=4)
    ds = xr.Dataset({"co": cube, "hcn": cube * 0.5})
    return ds, ds.modelfit(models.Gaussian1D(1.0, 0.0, 1.2), "velocity", scheduler="synchronous")


def test_plot_maps_full_names_mix_variables(two_variables):
    _, result = two_variables
    fig = plot_maps(result, ["hcn_amplitude", "co_amplitude", "co_fit_redchi2"])
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == [
        "hcn: amplitude",
        "co: amplitude",
        "co: fit_redchi2",
    ]
    assert [cb.get_ylabel() for cb in _colorbars(fig)][:2] == ["amplitude [K]", "amplitude [K]"]
    np.testing.assert_allclose(_image(panels[0]), 0.5 * _image(panels[1]), rtol=1e-6)
    assert fig._suptitle.get_text() == "hcn, co: fitted along velocity"
    # bare names take prefix=, else the first variable's
    fig = plot_maps(result, ["mean", "amplitude"], prefix="hcn_")
    assert [ax.get_title() for ax in _panels(fig)] == ["hcn: mean", "hcn: amplitude"]
    np.testing.assert_array_equal(_image(_panels(fig)[1]), result["hcn_amplitude"].values)
    fig = plot_maps(result, ["amplitude"])
    np.testing.assert_array_equal(_image(_panels(fig)[0]), result["co_amplitude"].values)
    with pytest.raises(KeyError, match=r"no variables \['co_n2h_amplitude'\]"):
        plot_maps(result, ["n2h_amplitude"])


def test_plot_fit_of_one_variable_of_a_dataset_fit(two_variables):
    ds, result = two_variables
    with pytest.raises(
        xarray_modelfit.ModelFitError,
        match=r"data is a Dataset .*; pass one variable with its prefix, e\.g\. "
        r"plot_fit\(data\['co'\], result, prefix='co_', \.\.\.\)",
    ) as info:
        plot_fit(ds, result, x=0, y=0)
    assert isinstance(info.value, TypeError)
    # the variable's own fit without prefix=: hcn's is half co's
    hcn = plot_fit(ds["hcn"], result, x=2, y=1).axes[0]
    co = plot_fit(ds["co"], result, x=2, y=1).axes[0]
    fits = [{line.get_label(): line for line in ax.lines}["fit"].get_ydata() for ax in (hcn, co)]
    np.testing.assert_allclose(fits[0], 0.5 * fits[1], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(
        fits[0], xarray_modelfit.evaluate(result, ds["hcn"], prefix="hcn_").isel(x=2, y=1).values
    )


def test_plot_maps_errors(fitted):
    _, result = fitted
    with pytest.raises(KeyError, match="no variables"):
        plot_maps(result, ["width"])
    with pytest.raises(TypeError, match="modelfit result"):
        plot_maps(xr.Dataset())


def test_plot_fit_lines_are_data_and_model(fitted, tmp_path):
    cube, result = fitted
    fig = plot_fit(cube, result, x=3, y=2)
    fig.savefig(tmp_path / "fit.png")
    ax, rax = fig.axes
    lines = {line.get_label(): line for line in ax.lines}
    spectrum = cube.isel(x=3, y=2)
    expected = xarray_modelfit.evaluate(result, cube).isel(x=3, y=2)
    np.testing.assert_array_equal(lines["data"].get_xdata(), cube.velocity.values)
    np.testing.assert_array_equal(lines["data"].get_ydata(), spectrum.values)
    np.testing.assert_allclose(lines["fit"].get_ydata(), expected.values, rtol=1e-12)
    # the same as the astropy model at that point
    point = xarray_modelfit.to_model(result.isel(x=3, y=2))
    np.testing.assert_allclose(
        lines["fit"].get_ydata(), point(cube.velocity.values * point.mean.unit).value, rtol=1e-10
    )
    np.testing.assert_allclose(
        rax.lines[0].get_ydata(), spectrum.values - expected.values, rtol=1e-12
    )
    assert "x=3" in ax.get_title() and "converged" in ax.get_title()
    assert ax.get_ylabel() == "intensity [K]"
    assert "velocity" in rax.get_xlabel() and "km" in rax.get_xlabel()


def test_plot_fit_components(compound, tmp_path):
    cube, result, model = compound
    fig = plot_fit(cube, result, x=1, y=2)
    fig.savefig(tmp_path / "fit.png")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) == {"data", "fit", "Gaussian1D [0]", "red", "Const1D [2]"}
    point = xarray_modelfit.to_model(result.isel(x=1, y=2))
    v = cube.velocity.values * point.mean_0.unit
    for i, label in enumerate(["Gaussian1D [0]", "red", "Const1D [2]"]):
        comp = point[i].copy()
        for name in comp.param_names:  # the compound's fitted values by name
            setattr(comp, name, getattr(point, f"{name}_{i}"))
        np.testing.assert_allclose(
            lines[label].get_ydata(), np.broadcast_to(comp(v).value, v.shape), rtol=1e-10
        )
    total = sum(lines[k].get_ydata() for k in ("Gaussian1D [0]", "red", "Const1D [2]"))
    np.testing.assert_allclose(total, lines["fit"].get_ydata(), rtol=1e-10)
    fig = plot_fit(cube, result, components=False, residuals=False, x=1, y=2)
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 2


def test_plot_fit_no_components_for_products(tmp_path):
    cube, _ = gaussian_cube(ny=2, nx=2, nchan=41, seed=6)
    cube.attrs.clear()  # plain numbers: astropy cannot give units to this product
    cube.velocity.attrs.clear()
    model = models.Gaussian1D(2.0, 0.0, 1.2) * models.Const1D(1.0, fixed={"amplitude": True})
    result = cube.modelfit(model, "velocity", scheduler="synchronous")
    fig = plot_fit(cube, result, x=0, y=1)
    assert [line.get_label() for line in fig.axes[0].lines] == ["data", "fit"]


def test_plot_fit_time_axis_and_given_axes(tmp_path):
    time = pd.date_range("2000-01-01", periods=48, freq="MS")
    t = (time - time[0]).days.values
    data = xr.DataArray(
        5.0 + 3.0 * np.sin(2 * np.pi * t / 365.25)[:, None] + np.zeros((48, 2)),
        dims=("time", "station"),
        coords={"time": time, "station": ["a", "b"]},
        attrs={"units": "degC"},
        name="temp",
    )
    model = models.Const1D(5.0) + models.Sine1D(3.0, 1 / 365.25, fixed={"frequency": True})
    result = data.modelfit(model, "time", scheduler="synchronous")
    fig, ax = plt.subplots()
    assert plot_fit(data, result, ax=ax, station="b") is fig
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(lines["fit"].get_ydata(), data.sel(station="b").values, atol=1e-6)
    assert "station=b" in ax.get_title()
    fig.savefig(tmp_path / "time.png")


def test_plot_fit_errors(fitted):
    cube, result = fitted
    with pytest.raises(ValueError, match="still free"):
        plot_fit(cube, result, x=1)
    with pytest.raises(ValueError, match="not dims"):
        plot_fit(cube, result, x=1, y=1, z=0)
