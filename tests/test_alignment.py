"""Arguments are matched to the data the way xarray matches arrays: by dim name and label."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import models

from xarray_modelfit import ModelFitError, modelfit
from xarray_modelfit.testing import gaussian_cube

MODEL = models.Gaussian1D(2.0, 0.0, 1.5)
ENGINES = ["batched", "loop"]


@pytest.fixture
def spiky():
    """A cube with strong spikes in three channels, and the mask that removes them."""
    cube, truth = gaussian_cube(ny=2, nx=3, nchan=41, seed=3)
    cube = cube.assign_coords(y=[10, 20], x=[0.5, 1.5, 2.5])
    spikes = np.zeros(cube.sizes["velocity"], bool)
    spikes[[5, 20, 33]] = True
    spiky = cube + 50.0 * xr.DataArray(spikes, dims="velocity")
    mask = xr.DataArray(spikes, dims="velocity", coords={"velocity": cube.velocity})
    return spiky, mask, truth


@pytest.mark.parametrize("engine", ENGINES)
def test_mask_with_the_datas_labels_in_another_order(spiky, engine):
    data, mask, truth = spiky
    kw = {"engine": engine, "scheduler": "synchronous"}
    ref = modelfit(data, MODEL, "velocity", mask=mask, **kw)
    np.testing.assert_allclose(ref.amplitude, truth["amplitude"], atol=0.15)  # spikes masked
    flipped = data.isel(velocity=slice(None, None, -1))  # descending axis, same labels
    res = modelfit(flipped, MODEL, "velocity", mask=mask, **kw)
    np.testing.assert_allclose(res.amplitude, ref.amplitude, rtol=1e-7)
    assert (res.fit_npoints == data.sizes["velocity"] - 3).all()


@pytest.mark.parametrize("engine", ENGINES)
def test_p0_map_with_labels_in_another_order(engine):
    cube, truth = gaussian_cube(ny=1, nx=6, nchan=64, seed=1)
    cube = cube.assign_coords(x=np.arange(6) * 10.0)
    start = xr.DataArray(truth["mean"][0], dims="x", coords={"x": cube.x})
    kw = {"engine": engine, "scheduler": "synchronous"}
    ref = modelfit(cube, MODEL, "velocity", p0={"mean": start}, **kw)
    shuffled = start.isel(x=[3, 0, 5, 1, 4, 2])
    res = modelfit(cube, MODEL, "velocity", p0={"mean": shuffled}, **kw)
    np.testing.assert_allclose(res["mean"], ref["mean"], rtol=1e-10)
    np.testing.assert_allclose(res["mean"].values[0], truth["mean"][0], atol=0.1)
    bounds = {"mean": (shuffled - 1.0, shuffled + 1.0)}
    bounded = modelfit(cube, MODEL, "velocity", p0={"mean": shuffled}, bounds=bounds, **kw)
    np.testing.assert_allclose(bounded["mean"], ref["mean"], rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"weights": xr.DataArray(np.ones(3), dims="x", coords={"x": [7.0, 8.0, 9.0]})},
        {"p0": {"mean": xr.DataArray(np.zeros(2), dims="y", coords={"y": [1, 2]})}},
        {"bounds": {"mean": (xr.DataArray([-1.0, -1.0], dims="y", coords={"y": [1, 2]}), 1)}},
    ],
)
def test_foreign_labels_are_refused(spiky, kw):
    data, _, _ = spiky
    with pytest.raises(ModelFitError, match="has labels along .* that are not the data's"):
        modelfit(data, MODEL, "velocity", scheduler="synchronous", **kw)


def test_plain_array_of_the_fitting_dims_shape_goes_along_the_fitting_dim():
    """nx == nchan: a 1-d numpy mask is the fitting dim's, as documented, not the last dim's."""
    cube, truth = gaussian_cube(ny=2, nx=41, nchan=41, seed=5)
    bad = np.zeros(41, bool)
    bad[[3, 17, 30, 36, 39]] = True
    spiky = cube + 50.0 * xr.DataArray(bad, dims="velocity")
    kw = {"scheduler": "synchronous"}
    by_name = modelfit(spiky, MODEL, "velocity", mask=xr.DataArray(bad, dims="velocity"), **kw)
    by_shape = modelfit(spiky, MODEL, "velocity", mask=bad, **kw)
    np.testing.assert_array_equal(by_shape.fit_npoints, 36)
    np.testing.assert_allclose(by_shape.amplitude, by_name.amplitude, rtol=1e-12)
    np.testing.assert_allclose(by_shape.amplitude, truth["amplitude"], atol=0.15)
    full = np.broadcast_to(bad[:, None, None], spiky.shape)  # the data's own shape also works
    np.testing.assert_allclose(modelfit(spiky, MODEL, "velocity", mask=full, **kw).amplitude,
                               by_name.amplitude, rtol=1e-12)  # fmt: skip


def test_plain_array_of_another_shape_is_refused(spiky):
    data, _, _ = spiky
    with pytest.raises(
        ModelFitError, match=r"does not broadcast to the data shape .* fitting dims"
    ):
        modelfit(data, MODEL, "velocity", weights=np.ones(7), scheduler="synchronous")


@pytest.mark.parametrize("engine", ENGINES)
def test_dask_weights_mask_and_p0_in_any_chunks(spiky, engine):
    """Auxiliary dask arrays chunked along the fitting dim (a noise cube opened like the data)."""
    data, mask, _ = spiky
    weights = xr.full_like(data, 2.0)
    kw = {"engine": engine, "scheduler": "synchronous"}
    ref = modelfit(data, MODEL, "velocity", weights=weights, mask=mask, **kw)
    lazy_w = weights.chunk({"velocity": 10, "y": 1})
    lazy_m = mask.chunk({"velocity": 7})
    p0 = {"mean": xr.DataArray(da.zeros((2, 3), chunks=1), dims=("y", "x"), coords=data.y.coords)}
    res = modelfit(data.chunk({"velocity": 5}), MODEL, "velocity", weights=lazy_w, mask=lazy_m,
                   p0=p0, **kw)  # fmt: skip
    np.testing.assert_allclose(res.amplitude, ref.amplitude, rtol=1e-7)
    np.testing.assert_allclose(res.amplitude_stderr, ref.amplitude_stderr, rtol=1e-6)


def test_labels_missing_from_data_with_duplicate_labels_are_refused():
    cube, _ = gaussian_cube(ny=1, nx=3, nchan=30)
    data = cube.isel(y=0).assign_coords(x=["a", "a", "b"])
    start = xr.DataArray([0.0, 0.1, 0.2], dims="x", coords={"x": ["b", "a", "c"]})
    with pytest.raises(
        ModelFitError, match=r"labels along 'x' that are not the data's \(\[b, a, c\]"
    ):
        modelfit(data, MODEL, "velocity", p0={"mean": start}, scheduler="synchronous")


def test_a_dataset_of_weights_gives_each_variable_its_own():
    cube, _ = gaussian_cube(ny=2, nx=2, nchan=41, noise=0.05, seed=8)
    ds = xr.Dataset({"co": cube, "hcn": 3 * cube})
    weights = xr.Dataset({"co": xr.full_like(cube, 20.0), "hcn": xr.full_like(cube, 20.0 / 3)})
    res = modelfit(ds, MODEL, "velocity", weights=weights, scheduler="synchronous")
    alone = modelfit(ds["hcn"], MODEL, "velocity", weights=weights["hcn"], scheduler="synchronous")
    np.testing.assert_allclose(res.hcn_amplitude_stderr, alone.amplitude_stderr, rtol=1e-10)
    np.testing.assert_allclose(res.hcn_amplitude_stderr, 3 * res.co_amplitude_stderr, rtol=1e-6)
    with pytest.raises(ModelFitError, match="weights is a Dataset without the variable 'hcn'"):
        modelfit(ds, MODEL, "velocity", weights=weights[["co"]], scheduler="synchronous")
    with pytest.raises(ModelFitError, match="mask is a Dataset; give a DataArray"):
        modelfit(
            cube, MODEL, "velocity", mask=xr.Dataset({"co": cube > 9}), scheduler="synchronous"
        )
