"""modelfit_to_zarr: region by region into zarr, resumable after a crash."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import fitting, models

from xarray_modelfit import ModelFitError, modelfit, modelfit_to_zarr
from xarray_modelfit.store import JOB_ATTR, REGION_CHUNKS, _ends, _fingerprint, _regions
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
    """A finished store is returned as is; other chunks of the input are a different job."""
    store = tmp_path / "r.zarr"
    modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler="threads")
    counting = DiesAfter(100)
    again = modelfit_to_zarr(cube, MODEL, "velocity", store, scheduler=counting)
    assert counting.calls == 0
    direct = modelfit(cube, MODEL, "velocity", scheduler="threads")
    xr.testing.assert_identical(again["amplitude"].load(), direct["amplitude"])
    assert again.attrs["n_fits"] == 30 and "modelfit_job" not in again.attrs
    # the fingerprint reads the first and last chunk, so it depends on the chunks
    with pytest.raises(ModelFitError, match=r"data chunks\.intensity \(store: .*\[5\]\], now"):
        modelfit_to_zarr(cube.chunk({"x": 2}), MODEL, "velocity", store, scheduler=counting)


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


def test_fingerprint_of_lazy_data_sees_its_first_and_last_chunk():
    values = np.random.default_rng(0).normal(size=(6, 5, 40))
    var = xr.Variable(("y", "x", "v"), values)
    lazy = _fingerprint(var.chunk({"y": 2}))
    assert _fingerprint(var.chunk({"y": 2})) == lazy
    assert _fingerprint(var.chunk({"y": 3})) != lazy  # the chunks are part of it
    for index in [(0, 0, 0), (-1, -1, -1), (5, 4, 0), (0, 3, 39)]:  # in the first or last chunk
        changed = values.copy()
        changed[index] += 1
        assert _fingerprint(xr.Variable(var.dims, changed).chunk({"y": 2})) != lazy
    middle = values.copy()
    middle[3, 2, 20] += 1  # a middle chunk is not read ...
    assert _fingerprint(xr.Variable(var.dims, middle).chunk({"y": 2})) == lazy
    assert _fingerprint(xr.Variable(var.dims, middle)) != _fingerprint(var)  # ... in memory it is
    head, tail = _ends((6, 5, 40), n=200)  # lazy, not dask: whole trailing dims, then the next
    assert head == (slice(0, 1), slice(0, 5), slice(0, 40))
    assert tail == (slice(5, 6), slice(0, 5), slice(0, 40))


def test_fingerprint_of_a_dask_array_reads_exactly_two_chunks():
    """A (velocity, y, x) cube chunked along y: only the first and last block are computed."""
    reads = []

    def counted(block, block_info=None):
        reads.append(tuple(block_info[0]["chunk-location"]))
        return block

    base = da.ones((8, 40, 30), chunks=(8, 4, 10), dtype="f4")
    arr = base.map_blocks(counted, dtype="f4", meta=np.array((), dtype="f4"))
    assert arr.numblocks == (1, 10, 3)
    _fingerprint(xr.Variable(("velocity", "y", "x"), arr))
    assert sorted(reads) == [(0, 0, 0), (0, 9, 2)]
    reads.clear()
    _fingerprint(xr.Variable(("velocity", "y", "x"), arr.rechunk((8, 40, 30))))
    assert len(reads) == 30  # one block: all of it (rechunking reads every input chunk)


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
    assert _layout(tmp_path / "d.zarr") == {"x": [[0, 2], [2, 4], [4, 5]]}  # y is not shared
    apart = xr.Dataset({"a": cube.isel(x=0), "b": cube.isel(y=0)})
    with pytest.raises(ModelFitError, match=r"variables .*'a': \['velocity', 'y'\].* share none"):
        modelfit_to_zarr(apart, MODEL, "velocity", tmp_path / "e.zarr", scheduler="threads")


def _layout(store) -> dict:
    """The regions recorded in the job of ``store``, by split dim."""
    import json

    import zarr

    return json.loads(zarr.open_group(str(store), mode="r").attrs[JOB_ATTR])["regions"]


@pytest.mark.parametrize(
    ("chunks", "regions"),
    [
        ((6,), [[0, 6]]),
        ((2, 2, 2), [[0, 2], [2, 4], [4, 6]]),
        ((1,) * 8, [[0, 2], [2, 4], [4, 6], [6, 8]]),
        ((3,) * 9, [[0, 6], [6, 12], [12, 18], [18, 24], [24, 27]]),
        ((1,) * 18, [[0, 4], [4, 8], [8, 12], [12, 16], [16, 18]]),
        ((5, 1, 4, 2, 2, 3, 1, 1, 7), [[0, 6], [6, 12], [12, 17], [17, 19], [19, 26]]),
    ],
    ids=["one", "three", "eight", "nine", "eighteen", "uneven"],
)
def test_regions_are_runs_of_whole_chunks(chunks, regions):
    """Up to REGION_CHUNKS chunks each, at least REGION_CHUNKS regions when there are as many."""
    ds = xr.Dataset({"a": (("y", "x"), da.zeros((sum(chunks), 3), chunks=(chunks, 3)))})
    got = [[r.start, r.stop] for r in _regions(ds, "y", ds.sizes["y"])]
    assert got == regions
    edges = set(np.cumsum((0,) + chunks).tolist())
    assert {e for r in got for e in r} <= edges
    assert max(len([e for e in edges if a < e <= b]) for a, b in got) <= REGION_CHUNKS


@pytest.mark.parametrize(
    ("chunks", "dim"),
    [({"y": 1}, "y"), ({"x": 1}, "x"), ({"y": 3, "x": 2}, "x"), ({"y": 3, "x": 3}, "y")],
)
def test_split_dim_is_the_most_chunked_iterated_dim(tmp_path, chunks, dim):
    """Whatever order open_zarr gives the dims; ties go to the data's own dim order."""
    data, _ = gaussian_cube(ny=6, nx=6, nchan=40, seed=8)
    data.to_dataset(name="cube").chunk(chunks).to_zarr(tmp_path / "in.zarr")
    lazy = xr.open_zarr(tmp_path / "in.zarr")["cube"]
    out = modelfit_to_zarr(lazy, MODEL, "velocity", tmp_path / "r.zarr", scheduler="threads")
    assert list(_layout(tmp_path / "r.zarr")) == [dim]
    direct = modelfit(data, MODEL, "velocity", scheduler="threads")
    xr.testing.assert_identical(out["amplitude"].load(), direct["amplitude"])


def test_zarr_input_resumes_along_its_chunked_dim(tmp_path):
    """docs/scale.md's case: a cube chunked along y, reopened with open_zarr (dims x, y)."""
    data, _ = gaussian_cube(ny=8, nx=5, nchan=40, seed=4)
    data.to_dataset(name="cube").chunk({"y": 1}).to_zarr(tmp_path / "in.zarr")
    lazy = xr.open_zarr(tmp_path / "in.zarr")["cube"]
    store = tmp_path / "r.zarr"
    with pytest.raises(ModelFitError, match=r"region y\[4:6\] \(2 of 4 regions are written"):
        modelfit_to_zarr(lazy, MODEL, "velocity", store, scheduler=DiesAfter(2))
    assert _layout(store) == {"y": [[0, 2], [2, 4], [4, 6], [6, 8]]}
    direct = modelfit(data, MODEL, "velocity", scheduler="synchronous")
    partial = xr.open_zarr(store)["amplitude"]
    xr.testing.assert_identical(partial.isel(y=slice(0, 4)).load(), direct["amplitude"][:4])
    assert np.isnan(partial.isel(y=slice(4, 8)).values).all()
    counting = DiesAfter(100)
    out = modelfit_to_zarr(lazy, MODEL, "velocity", store, scheduler=counting)
    assert counting.calls == 2  # only the two missing regions were fitted
    xr.testing.assert_identical(out["amplitude"].load(), direct["amplitude"])
