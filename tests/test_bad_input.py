"""Bad input gets a clear error before any fitting, naming the argument."""

from __future__ import annotations

import json

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import fitting, models

from xarray_modelfit import ModelFitError, ModelFitTypeError, modelfit
from xarray_modelfit.testing import gaussian_cube

G = models.Gaussian1D(2.0, 0.0, 1.2)


@pytest.fixture(scope="module")
def data():
    return gaussian_cube(ny=2, nx=3, nchan=20)[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dims": "frequency"}, ModelFitError, "fitting dim 'frequency' is not a dim of the data"),
        ({"dims": ("velocity", "x")}, ModelFitError, r"the model has 1 input\(s\)"),
        (
            {"dims": ("velocity", "velocity"), "model": models.Gaussian2D()},
            ModelFitError,
            "names a dim twice",
        ),
        ({"coords": {"velocity": np.arange(5)}}, ModelFitError, "has length 5 along 'velocity'"),
        ({"coords": {"velocity": "nope"}}, ModelFitError, "not a coordinate of the data"),
        ({"coords": {"x": "velocity"}}, ModelFitError, "not fitting dims"),
        ({"coords": {"velocity": np.ones((2, 20))}}, ModelFitError, "a plain array must be 1-d"),
        (
            {"coords": {"velocity": xr.DataArray(np.ones(20), dims="chan")}},
            ModelFitError,
            r"\['chan'\] are not dims of the data",
        ),
        (
            {"coords": {"velocity": xr.DataArray(np.ones(3), dims="x")}},
            ModelFitError,
            "does not vary along the fitting dim",
        ),
        (
            {"coords": {"velocity": 3.5}},
            TypeError,
            "must be a coordinate name, an array or a DataArray",
        ),
        ({"p0": {"sigma": 1.0}}, ModelFitError, r"p0 has entries for \['sigma'\]"),
        ({"bounds": {"width": (0, 1)}}, ModelFitError, r"bounds has entries for \['width'\]"),
        ({"bounds": {"stddev": (2, 1)}}, ModelFitError, r"bounds\['stddev'\] has lower > upper"),
        ({"bounds": {"stddev": 1.0}}, ModelFitError, r"must be a pair \(lo, hi\)"),
        (
            {"p0": {"mean": xr.DataArray(np.ones(20), dims="velocity")}},
            ModelFitError,
            "unexpected dimensions",
        ),
        ({"p0": {"mean": np.ones(7)}}, ModelFitError, "does not broadcast to the iterated shape"),
        ({"p0": {"mean": "zero"}}, TypeError, "must be a number"),
        ({"p0": [1, 2, 3]}, TypeError, "p0 must be a mapping"),
        (
            {"p0": {"mean": 3 * u.s}},
            ModelFitError,
            "cannot be converted to the parameter's units km / s",
        ),
        ({"weights": np.ones(7)}, ModelFitError, "weights has shape"),
        ({"weights": xr.DataArray(np.ones(4), dims="band")}, ModelFitError, "not dims of the data"),
        (
            {"mask": xr.DataArray(np.ones(5, bool), dims="velocity")},
            ModelFitError,
            "mask has length 5",
        ),
        (
            {"diagnostics": "everything"},
            ModelFitError,
            "diagnostics must be None, 'error', 'error\\+warn' or 'all'",
        ),
        ({"diagnostics": "error"}, ModelFitError, "needs diagnostics_path"),
        ({"diagnostics_callable": 3}, TypeError, "diagnostics_callable must be callable"),
        ({"fitter": "trf"}, TypeError, "fitter must be an astropy fitter instance"),
        ({"fitter": fitting.TRFLSQFitter}, TypeError, r"call it: TRFLSQFitter\(\)"),
        ({"model": "gaussian"}, TypeError, "model must be an astropy.modeling Model"),
        ({"engine": "fast"}, ModelFitError, "engine must be 'auto', 'loop' or 'batched'"),
        (
            {"engine": "batched", "fitter": fitting.SLSQPLSQFitter()},
            ModelFitError,
            "engine='batched' cannot fit this",
        ),
        ({"chunk_n_max": 0}, ModelFitError, "chunk_n_max must be a positive integer"),
        ({"chunk_n_max": True}, ModelFitError, "chunk_n_max must be a positive integer, got True"),
        ({"fitter_kwargs": [1]}, TypeError, "fitter_kwargs must be a mapping"),
        (
            {"data_unit": "furlongs-ish"},
            ModelFitError,
            "data 'intensity' data_unit 'furlongs-ish' is not a unit",
        ),
        (
            {"model": models.Gaussian1D(1 * u.K, 0 * u.s, 1 * u.s)},
            ModelFitError,
            "cannot be converted to the model's input units",
        ),
        (
            {"model": models.Gaussian1D(1 * u.m, 0 * u.km / u.s, 1 * u.km / u.s)},
            ModelFitError,
            "parameter units do not match the data units",
        ),
        (
            {"fitter_kwargs": {"maxiterations": 5}},
            ModelFitError,
            r"has \['maxiterations'\], which TRFLSQFitter does not take; it takes \['maxiter'",
        ),
        ({"fitter_kwargs": {"weights": 2.0}}, ModelFitError, "which modelfit passes itself"),
        (
            {
                "model": models.Gaussian1D(
                    1, 0, 1, fixed={"amplitude": True, "mean": True, "stddev": True}
                )
            },
            ModelFitError,
            "every parameter of Gaussian1D is fixed or tied",
        ),
        (
            {"model": models.Gaussian1D([1, 2], [0, 0], [1, 1], n_models=2)},
            ModelFitError,
            "is a set of 2 models",
        ),
    ],
)
def test_clear_errors(data, kwargs, error, match):
    kwargs = {"model": G, "dims": "velocity", "scheduler": "synchronous"} | kwargs
    with pytest.raises(error, match=match):
        modelfit(data, **kwargs)


def test_non_numeric_data():
    da = xr.DataArray(np.array([["a", "b"], ["c", "d"]]), dims=("x", "v"))
    with pytest.raises(TypeError, match="data must be real numbers"):
        modelfit(da, G, "v")


def test_not_xarray():
    with pytest.raises(TypeError, match="obj must be an xarray DataArray or Dataset"):
        modelfit(np.ones((3, 4)), G, "v")


def test_dataset_without_fittable_variable(data):
    with pytest.raises(
        ModelFitError, match="no numeric data variable of the Dataset has all fitting dims"
    ):
        modelfit(xr.Dataset({"m": data.sum("velocity")}), G, "velocity")


def test_unparseable_coordinate_units(data):
    bad = data.assign_coords(velocity=data.velocity.assign_attrs(units="parsecs per blorp"))
    with pytest.raises(
        ModelFitError, match="coordinate 'velocity' attrs\\['units'\\] 'parsecs per blorp'"
    ):
        modelfit(bad, G, "velocity")


def test_all_nat_time_axis():
    t = np.array(["NaT"] * 5, dtype="datetime64[ns]")
    da = xr.DataArray(np.ones((2, 5)), dims=("x", "time"), coords={"time": t})
    with pytest.raises(ModelFitError, match="holds only NaT"):
        modelfit(da, models.Linear1D(), "time")


def test_model_with_two_outputs(data):
    with pytest.raises(ModelFitError, match="must have one output"):
        modelfit(data, models.Mapping((0, 0)), "velocity")


def test_fitter_kwargs_of_a_fitter_with_open_keywords_pass_through(data):
    """SLSQP takes **kwargs: they reach the fitter (an iteration limit of 1 shows)."""
    fitter = fitting.SLSQPLSQFitter()
    short = modelfit(data, G, "velocity", fitter=fitter, fitter_kwargs={"maxiter": 1},
                     scheduler="synchronous")  # fmt: skip
    full = modelfit(data, G, "velocity", fitter=fitter, scheduler="synchronous")
    assert not np.allclose(short.amplitude, full.amplitude, rtol=1e-3)


def test_dataset_flags_are_left_out_and_errors_name_the_variable(data):
    ds = xr.Dataset({"co": data, "good": data > 0.5, "hcn": 2 * data})
    res = modelfit(ds, G, "velocity", scheduler="synchronous")
    assert json.loads(res.attrs["data_vars_fitted"]) == ["co", "hcn"]
    np.testing.assert_allclose(res.hcn_amplitude, 2 * res.co_amplitude, rtol=1e-6)
    bad = ds.assign(z=data.astype(complex))
    with pytest.raises(ModelFitTypeError, match="data variable 'z': data must be real numbers"):
        modelfit(bad, G, "velocity", scheduler="synchronous")


def test_bounds_that_pin_every_free_parameter(data):
    bounds = {"amplitude": (1, 1), "mean": (0, 0), "stddev": (1.5, 1.5)}
    with pytest.raises(ModelFitError, match="bounds pin every free parameter"):
        modelfit(data, G, "velocity", bounds=bounds, scheduler="synchronous")
    one_open = {"amplitude": (1, 1), "mean": (0, 0)}  # stddev still free: fitted
    res = modelfit(data, G, "velocity", bounds=one_open, scheduler="synchronous")
    assert (res.amplitude == 1).all() and np.isfinite(res.stddev).all()
