"""Files in and out: open a cube of any supported format, save and load results.

Results are plain netCDF or zarr (no pickles, no object arrays): the model is in
the attrs as JSON text, so ``to_model()`` and ``evaluate()`` work on a result
read back with :func:`load_result` or plain ``xarray.open_dataset`` /
``xarray.open_zarr``.
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xarray_modelfit.errors import ModelFitError

_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".h5", ".hdf5", ".he5", ".cdf")
_ZARR_SUFFIXES = (".zarr", ".zarr/")
#: leading bytes of the formats we read, for files whose name does not say
_MAGIC = {
    b"CDF\x01": "netcdf",
    b"CDF\x02": "netcdf",
    b"CDF\x05": "netcdf",
    b"\x89HDF\r\n\x1a\n": "netcdf",
    b"SIMPLE  =": "fits",
}


def _kind(path: Path, *, sniff: bool = True) -> str:
    """``"fits"``, ``"netcdf"`` or ``"zarr"`` from the name (or the contents) of ``path``."""
    name = path.name.lower()
    if name.endswith(_FITS_SUFFIXES):
        return "fits"
    if name.endswith(_ZARR_SUFFIXES) or (
        path.is_dir() and ((path / ".zgroup").exists() or (path / "zarr.json").exists())
    ):
        return "zarr"
    if name.endswith(_NETCDF_SUFFIXES):
        return "netcdf"
    if sniff and path.is_file():
        with path.open("rb") as f:
            head = f.read(16)
        for magic, kind in _MAGIC.items():
            if head.startswith(magic):
                return kind
    raise ModelFitError(
        f"{path}: unknown file type; expected a FITS file ({', '.join(_FITS_SUFFIXES[:3])}), "
        f"netCDF/HDF5 ({', '.join(_NETCDF_SUFFIXES[:3])}) or a zarr store (.zarr)"
    )


def _exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")


def open_cube(path: str | Path, variable: str | None = None, *, chunks: Any = None) -> xr.DataArray:
    """Open a FITS, netCDF or zarr file as one DataArray (lazily where possible).

    Parameters
    ----------
    path : str or Path
        The file (or zarr store). The format comes from the name
        (``.fits``, ``.nc``, ``.h5``, ``.zarr``, ...) or, failing that, from
        the first bytes of the file.
    variable : str, optional
        The data variable of a netCDF or zarr file; default the first one with
        two or more dims.
    chunks : optional
        Dask chunks, as for :func:`xarray.open_dataset`; default the chunks
        on disk.

    Returns
    -------
    xarray.DataArray
        Times are decoded (``datetime64`` or cftime for other calendars).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFitError
        If the file type is unknown, the file cannot be read, or it has no
        such (or no suitable) variable; the message names the file.
    """
    path = Path(path)
    _exists(path)
    kind = _kind(path)
    if kind == "fits":
        from xarray_modelfit.io_fits import open_fits

        return open_fits(path, chunks=chunks)
    try:
        if kind == "zarr":
            ds = xr.open_zarr(path, chunks=chunks if chunks is not None else "auto")
        else:
            ds = xr.open_dataset(path, chunks=chunks if chunks is not None else {})
    except Exception as exc:  # noqa: BLE001 - every backend failure gets the file's name
        raise ModelFitError(
            f"{path}: cannot be read as {kind} ({type(exc).__name__}: {exc}); "
            "is the file complete and not corrupt?"
        ) from None
    if variable is None:
        candidates = [n for n, v in ds.data_vars.items() if v.ndim >= 2]
        if not candidates:
            raise ModelFitError(
                f"{path}: no data variable with 2 or more dims "
                f"(variables: {list(map(str, ds.data_vars))})"
            )
        variable = candidates[0]
    if variable not in ds.data_vars:
        raise ModelFitError(
            f"{path}: no data variable {variable!r}; it has {list(map(str, ds.data_vars))}"
        )
    return ds[variable]


def _check_storable(ds: xr.Dataset, path: Path) -> None:
    for name, var in ds.variables.items():
        if var.dtype == object and not _plain_objects(var):
            raise ModelFitError(
                f"{path}: variable {name!r} holds Python objects (dtype object); results are "
                "written without pickles, convert it to numbers, strings or datetime64 first"
            )
    for owner, attrs in [("the Dataset", ds.attrs)] + [
        (f"variable {n!r}", v.attrs) for n, v in ds.variables.items()
    ]:
        for key, value in attrs.items():
            if not isinstance(value, str | int | float | np.number | np.ndarray | list | tuple):
                raise ModelFitError(
                    f"{path}: attrs[{key!r}] of {owner} is a {type(value).__name__}; netCDF and "
                    "zarr attributes must be strings, numbers or arrays of numbers"
                )


def _plain_objects(var: xr.Variable) -> bool:
    """True if an object array holds only what xarray encodes: strings and dates."""
    if var.chunks is not None:
        return True  # not computed here; xarray's encoder checks it while writing
    return all(
        isinstance(v, str | datetime.datetime) or hasattr(v, "calendar")
        for v in np.asarray(var.values).flat
    )


def save_result(result: xr.Dataset | xr.DataArray, path: str | Path, **kwargs: Any) -> Any:
    """Write a result (or an evaluated model cube) to netCDF or zarr.

    Parameters
    ----------
    result : Dataset or DataArray
        A :func:`~xarray_modelfit.modelfit` result, or a DataArray such as
        :func:`~xarray_modelfit.evaluate`'s. Dask-backed data is computed
        while it is written (pass ``compute=False`` for a delayed write).
    path : str or Path
        ``.nc`` (or another netCDF suffix) or ``.zarr``; an existing file or
        store is replaced.
    **kwargs
        Passed to :meth:`xarray.Dataset.to_netcdf` or
        :meth:`xarray.Dataset.to_zarr`.

    Returns
    -------
    None or dask.delayed.Delayed
        What xarray's writer returns (a delayed object for ``compute=False``).

    Raises
    ------
    ModelFitError
        If the path's suffix is not a netCDF or zarr one, or a variable or
        attribute cannot be stored without pickling.
    """
    path = Path(path)
    if isinstance(result, xr.DataArray):
        result = result.to_dataset(name=result.name if result.name is not None else "model")
    kind = _kind(path, sniff=False)
    if kind == "fits":
        raise ModelFitError(f"{path}: results are written to netCDF (.nc) or zarr (.zarr)")
    _check_storable(result, path)
    if kind == "zarr":
        kwargs.setdefault("mode", "w")
        result = _variable_length_strings(result)
        with warnings.catch_warnings():
            # zarr 3 warns that consolidated metadata is not in its spec; xarray reads it
            warnings.filterwarnings(
                "ignore", message=".*[Cc]onsolidated metadata", category=Warning
            )
            return result.to_zarr(path, **kwargs)
    return result.to_netcdf(path, **kwargs)


def _variable_length_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode as Python strings, which zarr 3 stores in its spec'd ``string`` type.

    (zarr 3 has no specification for numpy's fixed-width ``<U`` type and warns that
    other readers may not read it.)
    """
    fixed = {n: v for n, v in ds.variables.items() if v.dtype.kind == "U"}
    if not fixed:
        return ds
    return ds.assign_coords(
        {n: v.astype(object) for n, v in fixed.items() if n in ds.coords}
    ).assign({n: v.astype(object) for n, v in fixed.items() if n in ds.data_vars})


def load_result(path: str | Path, *, chunks: Any = None) -> xr.Dataset:
    """Read a result written by :func:`save_result`.

    Parameters
    ----------
    path : str or Path
        A netCDF file or zarr store.
    chunks : optional
        Dask chunks. A netCDF result is read into memory (and the file
        closed) unless ``chunks`` is given; a zarr result is lazy.

    Returns
    -------
    xarray.Dataset
        The result; ``flag_values`` attributes are numpy arrays again (zarr
        stores them as lists).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFitError
        If the file cannot be read; the message names the file.
    """
    path = Path(path)
    _exists(path)
    kind = _kind(path)
    try:
        if kind == "zarr":
            ds = xr.open_zarr(path, chunks=chunks if chunks is not None else "auto")
        elif chunks is not None:
            ds = xr.open_dataset(path, chunks=chunks)
        else:
            with xr.open_dataset(path) as opened:
                ds = opened.load()
    except Exception as exc:  # noqa: BLE001 - every backend failure gets the file's name
        raise ModelFitError(
            f"{path}: cannot be read as {kind} ({type(exc).__name__}: {exc})"
        ) from None
    for var in ds.variables.values():
        flags = var.attrs.get("flag_values")
        if isinstance(flags, list | tuple):
            var.attrs["flag_values"] = np.asarray(flags, dtype=var.dtype)
    return ds
