"""Files in and out: open a cube of any supported format, save and load results.

Results are plain netCDF or zarr (no pickles, no object arrays): the model is in
the attrs as JSON text, so ``to_model()`` and ``evaluate()`` work on a reloaded
result.
"""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from xarray_modelfit.errors import ModelFitError


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fts", ".fits.gz")):
        return "fits"
    if name.endswith(".zarr") or (path.is_dir() and (path / ".zgroup").exists() or (path / "zarr.json").exists()):
        return "zarr"
    if name.endswith((".nc", ".nc4", ".netcdf", ".h5", ".cdf")):
        return "netcdf"
    raise ModelFitError(f"{path}: unknown file type; expected .fits, .nc or .zarr")


def open_cube(path: str | Path, variable: str | None = None, *, chunks=None) -> xr.DataArray:
    """Open a FITS, netCDF or zarr file as one DataArray (lazily where possible)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    kind = _kind(path)
    if kind == "fits":
        from xarray_modelfit.io_fits import open_fits

        return open_fits(path, chunks=chunks)
    try:
        ds = xr.open_zarr(path) if kind == "zarr" else xr.open_dataset(path, chunks=chunks or {})
    except Exception as exc:
        raise ModelFitError(f"{path}: cannot be read as {kind}: {exc}") from None
    if variable is None:
        candidates = [n for n, v in ds.data_vars.items() if v.ndim >= 2]
        if not candidates:
            raise ModelFitError(f"{path}: no data variable with 2 or more dims")
        variable = candidates[0]
    if variable not in ds:
        raise ModelFitError(f"{path}: no variable {variable!r}; it has {list(ds.data_vars)}")
    return ds[variable]


def save_result(result: xr.Dataset, path: str | Path, **kwargs) -> None:
    """Write a result to netCDF (``.nc``) or zarr (``.zarr``)."""
    path = Path(path)
    if _kind(path) == "zarr":
        result.to_zarr(path, mode="w", **kwargs)
    else:
        result.to_netcdf(path, **kwargs)


def load_result(path: str | Path) -> xr.Dataset:
    """Read a saved result back (lazily for zarr)."""
    path = Path(path)
    if _kind(path) == "zarr":
        return xr.open_zarr(path)
    return xr.open_dataset(path).load()
