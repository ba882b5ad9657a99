"""Fit straight into a zarr store, region by region, resumable.

For runs longer than a worker's or a job's life: the result's layout is written
first, then each region (a run of chunks along the first iterated dim) is
computed and written on its own, and recorded in the store's attributes as
done. If the cluster dies, the regions already written stay intact and the
error says how far the run got; calling again with the same arguments fits only
the regions that are missing.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Hashable
from pathlib import Path

import numpy as np
import xarray as xr

from xarray_modelfit.errors import ModelFitError

DONE_ATTR = "modelfit_regions_done"


def _regions(ds: xr.Dataset, dim: Hashable, size: int) -> list[slice]:
    chunks = ds.chunksizes.get(dim)
    edges = np.cumsum((0,) + tuple(chunks)) if chunks else np.arange(0, size + 1)
    # group chunks so that a region holds at least one chunk and the edges match chunks
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def modelfit_to_zarr(
    obj: xr.DataArray,
    model,
    dims,
    store: str | Path,
    *,
    scheduler=None,
    progress: bool = False,
    **kwargs,
) -> xr.Dataset:
    """Fit ``obj`` like :func:`~xarray_modelfit.modelfit` and write the result to ``store``.

    Regions already recorded as done in ``store`` are skipped, so a run that
    was interrupted resumes where it stopped. Returns the result opened lazily
    from the store.

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
    iter_dims = [d for d in lazy.dims if d in obj.dims]
    if not iter_dims:
        raise ModelFitError("modelfit_to_zarr needs at least one iterated dim to split the work")
    dim = iter_dims[0]
    regions = _regions(lazy, dim, lazy.sizes[dim])
    store = Path(store)
    done = _done(store)
    if not done:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            lazy.to_zarr(store, mode="w", compute=False)
        _mark(store, [])
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
    from xarray_modelfit.results import counts

    result.attrs.update(counts(result))
    return result


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
