"""Fit straight into a zarr store, region by region, resumable.

For runs longer than a worker's or a job's life: the result's layout is written
first, then each region (a run of chunks along an iterated dim) is computed and
written on its own, and recorded in the store's attributes as done. If the
cluster dies, the regions already written stay intact and the error says how far
the run got; calling again with the same arguments fits only the regions that
are missing.

A resume must never mix two different fits in one store, so the store also
records the job that wrote it (model, fitter, arguments that change the result,
the data's dims, shape, dtype, coordinates, a fingerprint of its values, and the
chunks) and a call whose job differs is refused before any work.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xarray_modelfit.errors import ModelFitError

DONE_ATTR = "modelfit_regions_done"
JOB_ATTR = "modelfit_job"
#: modelfit arguments that change the result; the engine and ``chunk_n_max`` show up in the
#: result's attrs and chunks, the others (scheduler, progress, diagnostics) do not change it
RESULT_ARGS = (
    "fitter",
    "coords",
    "p0",
    "bounds",
    "weights",
    "mask",
    "skipna",
    "data_unit",
    "equivalencies",
    "fitter_kwargs",
    "covariance",
    "select",
    "refit",
)
#: arrays up to this size are recorded as values (readable in the error), larger ones as a hash
_LISTED = 8
#: a lazy array that is not a dask array is fingerprinted by about this many values at each end
_SAMPLE = 2**20
#: a region holds at most this many chunks of the split dim (computed together, so a parallel
#: scheduler has work for several workers), and fewer when the dim has fewer than
#: ``REGION_CHUNKS**2`` chunks, so that there are at least ``REGION_CHUNKS`` regions to resume from
#: whenever the dim has that many chunks
REGION_CHUNKS = 4


def _regions(ds: xr.Dataset, dim: Hashable, size: int) -> list[slice]:
    """Runs of whole chunks along ``dim``: see :data:`REGION_CHUNKS`."""
    chunks = ds.chunksizes.get(dim)
    edges = np.cumsum((0,) + tuple(chunks)) if chunks else np.array([0, size])
    n = len(edges) - 1
    per_region = min(REGION_CHUNKS, max(1, n // REGION_CHUNKS))
    cuts = edges[::per_region]
    if cuts[-1] != edges[-1]:
        cuts = np.append(cuts, edges[-1])
    return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def modelfit_to_zarr(
    obj: xr.DataArray | xr.Dataset,
    model,
    dims,
    store: str | Path,
    *,
    scheduler=None,
    progress: bool = False,
    overwrite: bool = False,
    **kwargs,
) -> xr.Dataset:
    """Fit ``obj`` like :func:`~xarray_modelfit.modelfit` and write the result to ``store``.

    Regions already recorded as done in ``store`` are skipped, so a run that
    was interrupted resumes where it stopped. Returns the result opened lazily
    from the store. A Dataset is fitted like :func:`~xarray_modelfit.modelfit`
    does (outputs prefixed ``{var}_``).

    The work is split along the iterated dim (shared by every fitted variable)
    with the most chunks, ties going to the first in the data's dim order. A
    region is a run of whole chunks of that dim, computed together so that
    parallel schedulers have work for several workers: at most ``REGION_CHUNKS``
    (4) chunks, fewer when the dim has fewer than 16 chunks so that there are
    still at least 4 regions to resume from (one chunk each if it has fewer).

    Before resuming, the job recorded in ``store`` is compared with this call,
    and a store written by a different job raises :class:`ModelFitError` naming
    what differs: the model (its JSON in the result's attrs), the engine, the
    fitter (type and plain settings) and the arguments that change the result
    (``p0``, ``bounds``, ``weights``, ``mask``, ``coords``, ``fitter_kwargs``,
    ...), the data's dims, shape and dtype, its coordinates, the chunks, and a
    fingerprint of the data's values. The fingerprint hashes in-memory (numpy)
    data whole, but of dask data only its first and last block (two chunks
    read), and of other lazy (file-backed) data only its first and last ~1M
    values, so as not to read the whole input again on every resume: a change
    of values elsewhere in a lazy input of the same shape is **not** detected. Give
    a new store, or ``overwrite=True``, when the data changed. Tie functions and
    callables are compared by name only.

    Parameters
    ----------
    obj, model, dims, scheduler, progress, **kwargs
        As for :func:`~xarray_modelfit.modelfit` (``compute`` is not accepted).
    store : str or Path
        A local directory: new, empty, or a store this function wrote.
    overwrite : bool
        Delete ``store`` (it must be a zarr store or an empty directory) and fit
        everything again, instead of resuming.

    Examples
    --------
    >>> import tempfile, numpy as np, xarray as xr
    >>> from astropy.modeling import models
    >>> import xarray_modelfit
    >>> v = np.linspace(-5, 5, 41)
    >>> cube = xr.DataArray(np.exp(-0.5 * v**2) * np.ones((3, 1)), dims=("pix", "v"), coords={"v": v})
    >>> path = tempfile.mkdtemp() + "/fit.zarr"
    >>> out = xarray_modelfit.modelfit_to_zarr(cube.chunk(pix=1), models.Gaussian1D(), "v", path)
    >>> np.round(out["stddev"].values, 6).tolist()
    [1.0, 1.0, 1.0]
    """
    from xarray_modelfit.fit import modelfit
    from xarray_modelfit.progress import compute_with_progress

    if "compute" in kwargs:
        raise ModelFitError("modelfit_to_zarr always computes; do not pass compute=")
    lazy = modelfit(obj, model, dims, compute=False, scheduler=scheduler, **kwargs).drop_encoding()
    lazy = _same_chunks(lazy)
    dim = _split_dim(lazy, obj)
    regions = _regions(lazy, dim, lazy.sizes[dim])
    store = Path(store)
    job = _job(obj, lazy, kwargs, dim, regions)
    if overwrite:
        _remove(store)
    done = _check_job(store, job)
    if done is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            lazy.assign_attrs({JOB_ATTR: _dumps(job)}).to_zarr(store, mode="w", compute=False)
        done = []
        _mark(store, done)
    if scheduler is None:
        from xarray_modelfit._validate import default_scheduler

        scheduler = default_scheduler(lazy.attrs["engine"])
    todo = [r for r in regions if [r.start, r.stop] not in done]
    for k, region in enumerate(todo):
        part = lazy.isel({dim: region})
        try:
            part = compute_with_progress(part, scheduler, 0, progress=False)
        except Exception as exc:
            written = len(regions) - len(todo) + k
            raise ModelFitError(
                f"the fit stopped in region {dim}[{region.start}:{region.stop}] "
                f"({written} of {len(regions)} regions are written to {store}); "
                f"call modelfit_to_zarr again with the same arguments to resume: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        drop = [v for v in part.variables if dim not in part[v].dims]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            part.drop_vars(drop).to_zarr(store, region={dim: region})
        done.append([region.start, region.stop])
        _mark(store, done)
    result = xr.open_zarr(store)
    result.attrs.pop(DONE_ATTR, None)
    result.attrs.pop(JOB_ATTR, None)
    from xarray_modelfit.results import counts, prefixes

    result.attrs.update(counts(result, prefixes=prefixes(result)))
    return result


def _split_dim(lazy: xr.Dataset, obj) -> Hashable:
    """The iterated dim that every output variable has with the most chunks (regions are cut
    along it); ties go to the first in the data's own dim order."""
    arrays = [obj] if isinstance(obj, xr.DataArray) else [obj[n] for n in _fitted(lazy, obj)]
    ordered = list(dict.fromkeys(d for a in arrays for d in a.dims))
    iter_dims = [d for d in ordered if d in lazy.dims]
    if not iter_dims:
        raise ModelFitError("modelfit_to_zarr needs at least one iterated dim to split the work")
    shared = [d for d in iter_dims if all(d in var.dims for var in lazy.data_vars.values())]
    if shared:
        chunks = lazy.chunksizes
        return max(shared, key=lambda d: len(chunks.get(d, (0,))))  # max keeps the first of ties
    dims_of = {str(a.name): list(a.dims) for a in arrays}
    raise ModelFitError(
        f"modelfit_to_zarr splits the work along an iterated dim that every fitted variable has, "
        f"but the variables {dims_of} share none; write each variable to its own store"
    )


def _fitted(lazy: xr.Dataset, obj) -> list[Hashable]:
    """Names of the fitted variables of a Dataset input (all of them if the result does not say)."""
    from xarray_modelfit.results import fitted_variables

    return fitted_variables(lazy) or list(obj.data_vars)


def _same_chunks(lazy: xr.Dataset) -> xr.Dataset:
    """One chunking per dim for all variables (zarr regions need it); the smallest wins."""
    sizes: dict[Hashable, set[int]] = {}
    for var in lazy.variables.values():
        for d, c in zip(var.dims, var.chunks or (), strict=False):
            sizes.setdefault(d, set()).add(max(c))
    uneven = {d: min(s) for d, s in sizes.items() if len(s) > 1}
    return lazy.chunk(uneven) if uneven else lazy


def _job(
    obj, lazy: xr.Dataset, kwargs: Mapping[str, Any], dim: Hashable, regions: list[slice]
) -> dict[str, Any]:
    """What makes this result this result, as JSON values (equal jobs give equal text)."""
    from xarray_modelfit.fit import modelfit

    defaults = {n: p.default for n, p in inspect.signature(modelfit).parameters.items()}
    job: dict[str, Any] = {str(k): _parsed(v) for k, v in lazy.attrs.items()}
    for name in RESULT_ARGS:
        value = kwargs.get(name, defaults[name])
        if name == "fitter" and value is None:
            from astropy.modeling import fitting

            value = fitting.TRFLSQFitter()  # modelfit's default
        job[f"argument {name}"] = _describe(value)
    arrays = {str(obj.name): obj} if isinstance(obj, xr.DataArray) else obj.data_vars
    names = _fitted(lazy, obj) if isinstance(obj, xr.Dataset) else list(arrays)
    job["data dims, shape and dtype"] = {
        n: [list(map(str, arrays[n].dims)), list(arrays[n].shape), str(arrays[n].dtype)]
        for n in names
    }
    job["data chunks"] = {n: arrays[n].chunks and list(map(list, arrays[n].chunks)) for n in names}
    job["data values"] = {n: _fingerprint(arrays[n].variable) for n in names}
    job["coordinates"] = {
        str(k): [list(map(str, c.dims)), _fingerprint(c.variable)] for k, c in obj.coords.items()
    }
    job["regions"] = {str(dim): [[r.start, r.stop] for r in regions]}
    return json.loads(_dumps(job))


def _parsed(value: Any) -> Any:
    """An attr holding JSON text (the model, lists of names) as its value."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _describe(value, depth: int = 0) -> Any:
    """A JSON stand-in for an argument that is the same text in every process for equal values."""
    import astropy.units as u

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, u.UnitBase):
        return str(value)
    if isinstance(value, u.Quantity):
        return {
            "value": _fingerprint(_variable(value.value)),
            "unit": str(value.unit),
        }
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, xr.DataArray):
        coords = {str(k): _fingerprint(c.variable) for k, c in value.coords.items()}
        return {
            "dims": list(map(str, value.dims)),
            "values": _fingerprint(value.variable),
            "coords": coords,
        }
    if isinstance(value, np.ndarray) or hasattr(value, "__dask_graph__"):
        return _fingerprint(_variable(value))
    if isinstance(value, Mapping):
        return {str(k): _describe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_describe(v, depth + 1) for v in value]
    if hasattr(value, "__qualname__"):  # functions and classes: by name, code is not compared
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    text = repr(value)
    if " at 0x" not in text:
        return text
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    if depth > 1 or not hasattr(value, "__dict__"):
        return kind
    # an object without a stable repr (a fitter): its type and its settings, not its last fit
    state = {k: _describe(v, depth + 1) for k, v in vars(value).items() if k != "fit_info"}
    return {"class": kind, "settings": state}


def _variable(array) -> xr.Variable:
    return xr.Variable([f"dim_{i}" for i in range(array.ndim)], array)


def _fingerprint(var: xr.Variable) -> Any:
    """Small in-memory arrays as values, else a hash: of all values in memory, of two chunks if lazy.

    A dask array is hashed by its chunks and its first and last block
    (``arr.blocks[0, 0, ...]`` and ``arr.blocks[-1, -1, ...]``): exactly two
    chunks are read, whatever the array's size, so the hash depends on the
    chunks and a change of values in any other chunk is **not** seen. A lazy
    array that is not a dask array (file-backed, opened without chunks) is
    hashed by its first and last ``_SAMPLE`` values (whole trailing dims).
    """
    in_memory = var.chunks is None and getattr(var, "_in_memory", False)
    if in_memory and var.size <= _LISTED:
        return var.values.tolist()
    digest = hashlib.blake2b(digest_size=12)
    digest.update(repr((var.shape, str(var.dtype))).encode())
    if in_memory:
        blocks = [var.values]
    elif var.chunks is not None:
        import dask

        arr = var.data
        digest.update(repr(arr.chunks).encode())
        ends = (
            [arr]
            if arr.npartitions == 1
            else [arr.blocks[(0,) * arr.ndim], arr.blocks[(-1,) * arr.ndim]]
        )
        blocks = dask.compute(*ends, scheduler="synchronous")
    else:
        head, tail = _ends(var.shape)
        parts = [var[head]] if var[head].size == var.size else [var[head], var[tail]]
        blocks = [part.values for part in parts]
    for block in blocks:
        block = np.asarray(block)
        digest.update(
            repr(block.tolist()).encode()
            if block.dtype.hasobject
            else np.ascontiguousarray(block).tobytes()
        )
    return digest.hexdigest()


def _ends(shape: tuple[int, ...], n: int = 0) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the first and the last about ``n`` values: whole trailing dims first."""
    head: list[slice] = []
    tail: list[slice] = []
    left = n or _SAMPLE
    for size in reversed(shape):
        k = min(size, max(left, 1))
        head.insert(0, slice(0, k))
        tail.insert(0, slice(size - k, size))
        left //= max(k, 1)
    return tuple(head), tuple(tail)


def _check_job(store: Path, job: dict[str, Any]) -> list[list[int]] | None:
    """Regions already done by this job in ``store``; None when there is no store yet."""
    if not store.exists() or (store.is_dir() and not any(store.iterdir())):
        return None
    again = "Give a new store path, or pass overwrite=True to delete it and fit again."
    try:
        import zarr

        attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    except Exception:  # noqa: BLE001 - whatever it is, it is not our store
        attrs = {}
    if JOB_ATTR not in attrs:
        raise ModelFitError(
            f"store {str(store)!r} exists and was not written by modelfit_to_zarr (it has no "
            f"record of the fit that wrote it), so it cannot be resumed. {again}"
        )
    differ = _differences(json.loads(attrs[JOB_ATTR]), job)
    if differ:
        more = f"; and {len(differ) - 6} more" if len(differ) > 6 else ""
        raise ModelFitError(
            f"store {str(store)!r} holds a different fit than this call, and resuming would mix "
            f"the two; what differs: {'; '.join(differ[:6])}{more}. {again}"
        )
    return json.loads(attrs.get(DONE_ATTR, "[]"))


def _differences(old: Any, new: Any, key: str = "") -> list[str]:
    """``key (store: ..., now: ...)`` for each leaf that differs, descending into mappings."""
    if _dumps(old) == _dumps(new):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _differences(old.get(k), new.get(k), _join(key, k))]
    old_text, new_text = _dumps(old), _dumps(new)
    if max(len(old_text), len(new_text)) > 80:
        return [key]
    return [f"{key} (store: {old_text}, now: {new_text})"]


def _join(key: str, sub: str) -> str:
    return f"{key}.{sub}" if key else sub


def _remove(store: Path) -> None:
    """Delete a zarr store (``overwrite=True``); refuse anything else but an empty directory."""
    if not store.exists():
        return
    is_zarr = store.is_dir() and any(
        (store / name).exists() for name in ("zarr.json", ".zgroup", ".zattrs")
    )
    if store.is_dir() and (is_zarr or not any(store.iterdir())):
        shutil.rmtree(store)
        return
    raise ModelFitError(
        f"overwrite=True deletes the store, but {str(store)!r} is not a zarr store; "
        f"refusing to delete it. Give a path for the new store."
    )


def _done(store: Path) -> list[list[int]]:
    if not store.exists():
        return []
    try:
        with warnings.catch_warnings():  # a store being created may not be consolidated yet
            warnings.simplefilter("ignore")
            attrs = xr.open_zarr(store).attrs
    except Exception:
        return []
    return json.loads(attrs.get(DONE_ATTR, "[]"))


def _mark(store: Path, done: list) -> None:
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    group.attrs[DONE_ATTR] = json.dumps(done)
    with warnings.catch_warnings():  # zarr 3 notes that consolidated metadata is an extension
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(str(store))
