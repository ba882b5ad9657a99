"""modelfit_to_zarr: region by region into zarr, resumable after a crash."""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import fitting, models

from xarray_modelfit import ModelFitError, modelfit, modelfit_to_zarr
from xarray_modelfit.store import _ends, _fingerprint
from xarray_modelfit.testing import gaussian_cube

MODEL = models.Gaussian1D(2.0, 0.0, 1.2)


@pytest.fixture
def cube():
    data, _ = gaussian_cube(ny=6, nx=5, nchan=40, seed=8)
    return data.chunk({"y": 2})


class DiesAfter:
    """A dask scheduler that computes ``n`` graphs, then fails like a lost cluster."""

    def __init__(self, n):
        self.calls, self.n = 0, n

    def __call__(self, dsk, keys, **kwargs):
        self.calls += 1
        if self.calls > self.n:
            raise OSError("connection to the scheduler was lost")
        return dask.get(dsk, keys, **kwargs)


@pytest.mark.parametrize("engine", ["loop", "batched"])
def test_writes_all_regions_and_equals_modelfit(cube, tmp_path, engine):
    out = modelfit_to_zarr(
        cube, MODEL, "velocity", tmp_path / "r.zarr", engine=engine, scheduler="threads"
    )
    direct = modelfit(cube, MODEL, "velocity", engine=engine, scheduler="threads")
    for name in direct.data_vars:
        xr.testing.assert_identical(out[name].load(), direct[name])
    assert out.attrs["n_fits"] == 30 and out.attrs["engine"] == engine


def test_crash_keeps_written_regions_and_resume_finishes(cube, tmp_path):
    store = tmp_path / "r.zarr"
    with pytest.raises(
        ModelFitError, match=r"1 of 3 regions are written .* call modelfit_to_zarr again"
    ):
        modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler=DiesAfter(1))
    partial = xr.open_zarr(store)
    direct = modelfit(cube, MODEL, "velocity", scheduler="synchronous")
    xr.testing.assert_identical(partial["amplitude"][:2].load(), direct["amplitude"][:2])
    assert np.isnan(partial["amplitude"][2:].values).all()
    counting = DiesAfter(100)
    out = modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler=counting)
    assert counting.calls == 2  # only the two missing regions were fitted
    xr.testing.assert_identical(out["amplitude"].load(), direct["amplitude"])


def test_needs_an_iterated_dim(tmp_path):
    spectrum = xr.DataArray(np.exp(-0.5 * np.linspace(-3, 3, 20) ** 2), dims="v")
    with pytest.raises(ModelFitError, match="needs at least one iterated dim"):
        modelfit_to_zarr(spectrum, MODEL, "v", tmp_path / "x.zarr")
    with pytest.raises(ModelFitError, match="always computes"):
        modelfit_to_zarr(spectrum, MODEL, "v", tmp_path / "x.zarr", compute=False)


def test_zarr_input_chunked_along_the_fitting_dim(cube, tmp_path):
    """A store with one chunk per channel is rechunked by dask, never loaded whole."""
    cube.to_dataset(name="cube").chunk({"velocity": 1, "y": 3, "x": 5}).to_zarr(
        tmp_path / "in.zarr"
    )
    lazy = xr.open_zarr(tmp_path / "in.zarr")["cube"]
    assert len(lazy.chunks[0]) == 40
    res = modelfit(lazy, MODEL, "velocity", compute=False)
    assert res["amplitude"].chunks is not None
    xr.testing.assert_identical(
        res.compute(scheduler="threads")["amplitude"],
        modelfit(cube.compute(), MODEL, "velocity", scheduler="threads")["amplitude"],
    )


def test_rerun_of_the_same_job_reuses_the_store(cube, tmp_path):
    """A finished store is returned as is; the chunks of dims not split into regions may change."""
    store = tmp_path / "r.zarr"
    modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler="threads")
    counting = DiesAfter(100)
    again = modelfit_to_zarr(cube.chunk({"x": 2}), MODEL, "velocity", store, scheduler=counting)
    assert counting.calls == 0
    direct = modelfit(cube, MODEL, "velocity", scheduler="threads")
    xr.testing.assert_identical(again["amplitude"].load(), direct["amplitude"])
    assert again.attrs["n_fits"] == 30 and "modelfit_job" not in again.attrs


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: (3 * c, MODEL, {}), r"data values\.intensity \(store: "),
        (lambda c: (c, models.Lorentz1D(2, 0, 1.2), {}), r"model\.class \(store: .*Lorentz1D"),
        (lambda c: (c, MODEL, {"p0": {"amplitude": 3.0}}), r"argument p0 \(store: null"),
        (
            lambda c: (c, MODEL, {"fitter": fitting.TRFLSQFitter(calc_uncertainties=True)}),
            r"argument fitter\.settings\._calc_uncertainties \(store: false, now: true\)",
        ),
        (lambda c: (c, MODEL, {"engine": "loop"}), r"engine \(store: \"batched\""),
        (lambda c: (c.assign_coords(x=c.x + 10), MODEL, {}), r"coordinates\.x \(store: "),
        (lambda c: (c.chunk({"y": 3}), MODEL, {}), r"regions\.y \(store: \[\[0, 2\]"),
        (lambda c: (c.isel(x=slice(0, 4)), MODEL, {}), r"data dims, shape and dtype\.intensity"),
    ],
    ids=["data", "model", "p0", "fitter", "engine", "coords", "regions", "shape"],
)
def test_a_different_job_is_refused_and_the_store_kept(cube, tmp_path, change, match):
    store = tmp_path / "r.zarr"
    modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler="threads")
    data, model, kwargs = change(cube)
    with pytest.raises(ModelFitError, match=match) as info:
        modelfit_to_zarr(data, model, "velocity", store, scheduler="threads", **kwargs)
    assert "holds a different fit" in str(info.value) and "overwrite=True" in str(info.value)
    direct = modelfit(cube, MODEL, "velocity", scheduler="threads")
    xr.testing.assert_identical(xr.open_zarr(store)["amplitude"].load(), direct["amplitude"])


def test_overwrite_fits_a_different_job_again(cube, tmp_path):
    store = tmp_path / "r.zarr"
    modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler="threads")
    lorentz = models.Lorentz1D(2.0, 0.0, 1.2)
    out = modelfit_to_zarr(cube, lorentz, "velocity", store, scheduler="threads", overwrite=True)
    direct = modelfit(cube, lorentz, "velocity", scheduler="threads")
    for name in direct.data_vars:
        xr.testing.assert_identical(out[name].load(), direct[name])
    assert "amplitude_stderr" in out and "stddev" not in out
    assert out.attrs["model"] == direct.attrs["model"]


def test_a_store_it_did_not_write_is_refused(cube, tmp_path):
    foreign = tmp_path / "foreign.zarr"
    cube.to_dataset(name="cube").to_zarr(foreign)
    with pytest.raises(ModelFitError, match="was not written by modelfit_to_zarr"):
        modelfit_to_zarr(cube, MODEL, "velocity", foreign, scheduler="threads")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("precious")
    with pytest.raises(ModelFitError, match="was not written by modelfit_to_zarr"):
        modelfit_to_zarr(cube, MODEL, "velocity", notes, scheduler="threads")
    with pytest.raises(ModelFitError, match="is not a zarr store; refusing to delete it"):
        modelfit_to_zarr(cube, MODEL, "velocity", notes, scheduler="threads", overwrite=True)
    assert (notes / "keep.txt").read_text() == "precious"
    direct = modelfit(cube, MODEL, "velocity", scheduler="threads")
    out = modelfit_to_zarr(cube, MODEL, "velocity", foreign, scheduler="threads", overwrite=True)
    xr.testing.assert_identical(out["amplitude"].load(), direct["amplitude"])
    empty = tmp_path / "empty"
    empty.mkdir()
    out = modelfit_to_zarr(cube, MODEL, "velocity", empty, scheduler="threads")
    xr.testing.assert_identical(out["amplitude"].load(), direct["amplitude"])


def test_fingerprint_of_lazy_data_ignores_chunks_and_sees_its_ends():
    values = np.random.default_rng(0).normal(size=(6, 5, 40))
    var = xr.Variable(("y", "x", "v"), values)
    lazy = [_fingerprint(var.chunk({"y": n})) for n in (1, 2, 6)]
    assert lazy[0] == lazy[1] == lazy[2]
    changed = values.copy()
    changed[-1, -1, -1] += 1
    assert _fingerprint(xr.Variable(var.dims, changed).chunk({"y": 2})) != lazy[0]
    middle = values.copy()
    middle[3, 2, 20] += 1  # in memory, every value counts
    assert _fingerprint(xr.Variable(var.dims, middle)) != _fingerprint(var)
    head, tail = _ends((6, 5, 40), n=200)  # lazy: whole trailing dims, then part of the next
    assert head == (slice(0, 1), slice(0, 5), slice(0, 40))
    assert tail == (slice(5, 6), slice(0, 5), slice(0, 40))


def test_dataset_input_is_written_with_prefixed_names(cube, tmp_path):
    ds = xr.Dataset({"a": cube, "b": 2 * cube})
    out = modelfit_to_zarr(ds, MODEL, "velocity", tmp_path / "d.zarr", scheduler="threads")
    direct = modelfit(ds, MODEL, "velocity", scheduler="threads")
    assert sorted(out.data_vars) == sorted(direct.data_vars)
    for name in direct.data_vars:
        xr.testing.assert_identical(out[name].load(), direct[name])
    assert out.attrs["n_fits"] == 60 and out.attrs["n_converged"] == direct.attrs["n_converged"]


def test_dataset_variables_with_different_dims_and_chunks(cube, tmp_path):
    """Split along the iterated dim they share; different chunks of it are made one."""
    ds = xr.Dataset({"a": cube.chunk({"x": 2}), "b": cube.isel(y=0).chunk({"x": 3})})
    out = modelfit_to_zarr(ds, MODEL, "velocity", tmp_path / "d.zarr", scheduler="threads")
    direct = modelfit(ds.compute(), MODEL, "velocity", scheduler="threads")
    for name in direct.data_vars:
        xr.testing.assert_identical(out[name].load(), direct[name])
    assert out["a_amplitude"].dims == ("y", "x") and out["b_amplitude"].dims == ("x",)
    apart = xr.Dataset({"a": cube.isel(x=0), "b": cube.isel(y=0)})
    with pytest.raises(ModelFitError, match=r"variables .*'a': \['velocity', 'y'\].* share none"):
        modelfit_to_zarr(apart, MODEL, "velocity", tmp_path / "e.zarr", scheduler="threads")
