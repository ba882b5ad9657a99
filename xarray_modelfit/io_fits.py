"""Read FITS images and spectral cubes into labelled DataArrays.

Dims are named by what the WCS axes are: the spectral dim by its physical type
(``velocity``, ``frequency``, ``wavelength``, ``energy``...), the celestial pair
``y`` / ``x``. World coordinates come from the WCS: a 1-d spectral coordinate
in the WCS unit and 2-d ``(y, x)`` sky coordinates in deg (``ra``/``dec``,
``glon``/``glat``, ``elon``/``elat``, otherwise ``lon``/``lat``).

Pixel bookkeeping: every dim also carries an integer coordinate ``pix_<dim>``
holding the original 0-based pixel index along its WCS axis (its attrs record
``wcs_axis``, the 0-based FITS axis number). ``isel`` slices them with the
data, so :func:`wcs_of` can rebuild the WCS of any regular slice from
``attrs["fits_header"]`` and those offsets.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr
from astropy import units as u
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS, FITSFixedWarning, Sip
from astropy.wcs.utils import wcs_to_celestial_frame
from dask.base import tokenize

from xarray_modelfit.errors import ModelFitError, ModelFitTypeError, warn

__all__ = ["open_fits", "from_wcs", "wcs_of"]

LAZY_BYTES = 256 * 2**20
"""Images larger than this (raw data bytes) open lazily even when ``chunks=None``."""

_SPECTRAL_DIMS = {
    **dict.fromkeys(("VOPT", "VRAD", "VELO", "FELO"), "velocity"),
    **dict.fromkeys(("FREQ", "AFRQ"), "frequency"),
    **dict.fromkeys(("WAVE", "AWAV"), "wavelength"),
    **{"ENER": "energy", "WAVN": "wavenumber", "ZOPT": "redshift"},
}
_SKY_NAMES = {t: t.lower() for t in ("RA", "DEC", "GLON", "GLAT", "ELON", "ELAT", "SLON", "SLAT")}
_RAW_DTYPES = {8: "u1", 16: "i2", 32: "i4", 64: "i8", -32: "f4", -64: "f8"}


def _read_wcs(header: fits.Header, source: str) -> WCS:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            return WCS(header)
    except Exception as err:
        ctypes = [header.get(f"CTYPE{i}", "") for i in range(1, header.get("NAXIS", 0) + 1)]
        msg = str(err).strip().splitlines()[-1]
        raise ModelFitError(f"{source}: invalid WCS (CTYPEs {ctypes}): {msg}") from err


def _layout(wcs: WCS, shape: tuple[int, ...], source: str) -> list[str | None]:
    """Dim name per array axis (``None``: a degenerate axis to squeeze)."""
    ctypes = [c.strip() for c in wcs.wcs.ctype]
    if wcs.naxis != len(shape):
        raise ModelFitError(
            f"{source}: the WCS has {wcs.naxis} axes but the data has {len(shape)} dims "
            f"(shape {shape})"
        )
    if not any(ctypes):
        raise ModelFitError(
            f"{source}: the header has no WCS (no CTYPEn keywords); build the coordinates "
            "yourself: from_wcs(data, wcs) with an astropy WCS, or xr.DataArray(data, dims=...)"
        )
    cel = sorted(i for i in (wcs.wcs.lng, wcs.wcs.lat) if i >= 0)
    dims: list[str | None] = []
    for a, n in enumerate(shape):
        i = wcs.naxis - 1 - a
        if i in cel:
            dims.append("x" if i == cel[0] else "y")
        elif n == 1:
            dims.append(None)
        elif i == wcs.wcs.spec:
            dims.append(_SPECTRAL_DIMS.get(ctypes[i][:4], "spectral"))
        else:
            raise ModelFitError(
                f"{source}: axis {i + 1} (CTYPE{i + 1} = {ctypes[i]!r}, length {n}) is "
                "neither celestial nor spectral; supported are one spectral axis plus a "
                "celestial pair (other axes only with length 1, which are squeezed). "
                "Select a plane and use from_wcs(data, wcs.dropaxis(...)) or xr.DataArray"
            )
    return dims


def _assemble(
    data: Any,
    wcs: WCS,
    dims: list[str | None],
    header: str,
    name: Hashable | None,
    units: str | None,
) -> xr.DataArray:
    naxis = wcs.naxis
    shape = data.shape
    axis = {d: naxis - 1 - a for a, d in enumerate(dims) if d is not None}
    n_of = [shape[naxis - 1 - i] for i in range(naxis)]  # length per WCS axis
    ctypes = [c.strip() for c in wcs.wcs.ctype]
    coords: dict[str, Any] = {}
    for d, i in axis.items():
        coords[f"pix_{d}"] = (
            d,
            np.arange(n_of[i]),
            {"wcs_axis": i, "long_name": f"FITS pixel index along {ctypes[i]}"},
        )

    def world(pix: dict[int, np.ndarray]) -> list[np.ndarray]:
        grid = np.broadcast_arrays(*pix.values())
        p = [np.zeros(grid[0].shape) for _ in range(naxis)]
        for k, g in zip(pix, grid, strict=True):
            p[k] = g
        out = wcs.pixel_to_world_values(*p)
        return list(out) if naxis > 1 else [out]

    spec, lng, lat = wcs.wcs.spec, wcs.wcs.lng, wcs.wcs.lat
    if spec >= 0:
        sname = _SPECTRAL_DIMS.get(ctypes[spec][:4], "spectral")
        values = world({spec: np.arange(n_of[spec])})[spec]
        attrs = {"units": u.Unit(wcs.wcs.cunit[spec]).to_string(), "wcs_ctype": ctypes[spec]}
        if wcs.wcs.specsys:
            attrs["specsys"] = wcs.wcs.specsys
        coords[sname] = ((sname,), values, attrs) if sname in axis else ((), values[0], attrs)
        if lng >= 0:
            corr = wcs.axis_correlation_matrix
            if corr[spec, lng] or corr[spec, lat] or corr[lng, spec] or corr[lat, spec]:
                warn(
                    f"the spectral axis {ctypes[spec]!r} is coupled to the celestial axes; "
                    f"the 1-d {sname!r} coordinate holds the values at celestial pixel (0, 0)"
                )
    if lng >= 0:
        ix, iy = min(lng, lat), max(lng, lat)
        w = world({iy: np.arange(n_of[iy])[:, None], ix: np.arange(n_of[ix])[None, :]})
        try:
            frame = wcs_to_celestial_frame(wcs).name
        except Exception:
            frame = None
        for i, val, generic in ((lng, np.mod(w[lng], 360.0), "lon"), (lat, w[lat], "lat")):
            typ = (wcs.wcs.lngtyp if i == lng else wcs.wcs.lattyp).strip()
            attrs = {"units": u.Unit(wcs.wcs.cunit[i]).to_string(), "wcs_ctype": ctypes[i]}
            if frame:
                attrs["frame"] = frame
            coords[_SKY_NAMES.get(typ, generic)] = (("y", "x"), val, attrs)

    attrs: dict[str, Any] = {}
    if units is not None:
        attrs["units"] = str(units)
    squeezed = [
        ctypes[naxis - 1 - a] or f"AXIS{naxis - a}" for a, d in enumerate(dims) if d is None
    ]
    if squeezed:
        attrs["squeezed_axes"] = " ".join(squeezed)
    attrs["fits_header"] = header
    index = tuple(0 if d is None else slice(None) for d in dims)
    return xr.DataArray(
        data[index], dims=[d for d in dims if d is not None], coords=coords, attrs=attrs, name=name
    )


def _native(array: Any) -> Any:
    dtype = np.dtype(array.dtype)
    if dtype.isnative:
        return array
    if isinstance(array, dsa.Array):
        return array.astype(dtype.newbyteorder("="))
    return np.asarray(array, dtype=dtype.newbyteorder("="))


def from_wcs(
    array: Any, wcs: WCS, *, name: Hashable | None = None, units: str | None = None
) -> xr.DataArray:
    """Label an in-memory (numpy or dask) array with the world coordinates of a WCS.

    Parameters
    ----------
    array : array-like
        Data in numpy axis order (the reverse of the FITS / WCS axis order).
    wcs : astropy.wcs.WCS
        One axis per array dim: a celestial pair and/or one spectral axis;
        other axes must have length 1 (they are squeezed).
    name : hashable, optional
        Name of the DataArray.
    units : str, optional
        Stored as ``attrs["units"]``.

    Returns
    -------
    xarray.DataArray
        Same layout as :func:`open_fits`; dask arrays stay lazy.

    Examples
    --------
    >>> cube = from_wcs(np.zeros((53, 105, 105), "f4"), WCS(header), units="K")
    >>> cube.dims
    ('velocity', 'y', 'x')
    """
    if not isinstance(wcs, WCS):
        raise ModelFitTypeError(
            f"from_wcs: wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}"
        )
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        array = np.asarray(array)
    source = "from_wcs"
    dims = _layout(wcs, tuple(array.shape), source)
    header = wcs.to_header(relax=True).tostring()
    return _assemble(_native(array), wcs, dims, header, name, units)


class _FitsReader:
    """Picklable lazy reader of one image HDU: each read opens the file (memory-mapped)."""

    def __init__(self, path: str, index: int, header: fits.Header, compressed: bool):
        self.path, self.index, self.compressed = path, index, compressed
        self.shape = tuple(header[f"NAXIS{k}"] for k in range(header["NAXIS"], 0, -1))
        self.ndim = len(self.shape)
        bitpix = header["BITPIX"]
        self.bscale, self.bzero = header.get("BSCALE", 1), header.get("BZERO", 0)
        self.blank = header.get("BLANK") if bitpix > 0 else None
        raw = np.dtype(_RAW_DTYPES[bitpix])
        scaled = not (self.bscale == 1 and self.bzero == 0)
        if not scaled:
            self.dtype = raw
        elif self.bscale == 1 and bitpix == 8 and self.bzero == -128:
            self.dtype = np.dtype("i1")
        elif self.bscale == 1 and bitpix > 8 and self.bzero == 1 << (bitpix - 1):
            self.dtype = np.dtype(f"u{bitpix // 8}")
        else:
            self.dtype = np.dtype("f8" if bitpix > 16 else "f4" if bitpix > 0 else raw)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        scale = not self.compressed
        with fits.open(
            self.path, memmap=True, lazy_load_hdus=True, do_not_scale_image_data=scale
        ) as hdul:
            hdu = hdul[self.index]
            raw = hdu.section[key] if self.compressed else hdu.data[key]
            raw = np.array(raw, dtype=raw.dtype.newbyteorder("="))  # copy out of the memmap
        if self.compressed or raw.dtype == self.dtype:
            return raw.astype(self.dtype, copy=False)
        if self.dtype.kind in "iu":  # FITS pseudo-(un)signed integers
            size = raw.dtype.itemsize
            flip = np.array(1 << (8 * size - 1), dtype=f"u{size}")
            return (raw.view(f"u{size}") ^ flip).view(self.dtype)
        out = raw.astype(self.dtype)
        if self.bscale != 1:
            out *= self.bscale
        if self.bzero != 0:
            out += self.bzero
        if self.blank is not None:
            out[raw == self.blank] = np.nan
        return out


def _hdu_listing(hdul: fits.HDUList) -> str:
    return "; ".join(f"{r[0]}: {r[1]!r} ({r[3]}, shape {r[5]})" for r in hdul.info(output=False))


def _dask_chunks(chunks: Any, dims: list[str | None]) -> tuple[Any, ...]:
    kept = [d for d in dims if d is not None]
    if isinstance(chunks, Mapping):
        unknown = set(chunks) - set(kept)
        if unknown:
            raise ModelFitError(
                f"chunks names unknown dims {sorted(map(str, unknown))}; dims are {kept}"
            )
        per = [chunks.get(d, "auto") for d in kept]
    elif isinstance(chunks, (tuple, list)):
        if len(chunks) != len(kept):
            raise ModelFitError(f"chunks {tuple(chunks)} needs one entry per dim {kept}")
        per = list(chunks)
    else:
        per = [chunks] * len(kept)
    it = iter(per)
    return tuple(1 if d is None else next(it) for d in dims)


def open_fits(
    path: str | os.PathLike[str], hdu: int | str = 0, *, chunks: Any = None
) -> xr.DataArray:
    """Open a FITS image or spectral cube as a DataArray with WCS world coordinates.

    Parameters
    ----------
    path : str or path-like
        The FITS file.
    hdu : int or str, default 0
        Index or EXTNAME of the image HDU.
    chunks : int, str, tuple or dict, optional
        Dask chunks of the (squeezed) dims, a dict may name dims
        (``{"velocity": -1}``). When given, or when the data exceed 256 MB,
        the array is dask-backed and read lazily; otherwise it is read into
        memory. Either way the dtype is the stored one (scaled as astropy does),
        in native byte order.

    Returns
    -------
    xarray.DataArray
        Dims ``(<spectral>, "y", "x")`` (or the subset present; length-1
        non-celestial axes such as STOKES are squeezed and listed in
        ``attrs["squeezed_axes"]``), spectral coordinate in its WCS unit,
        2-d sky coordinates in deg, integer ``pix_<dim>`` coordinates,
        ``attrs["units"]`` from BUNIT and ``attrs["fits_header"]``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFitError
        Not a readable FITS file, HDU missing or not an image, no WCS, or an
        axis that is neither celestial nor spectral.

    Examples
    --------
    >>> cube = open_fits("l1448_13co.fits")
    >>> cube.dims
    ('velocity', 'y', 'x')
    >>> cube.velocity.attrs["units"]
    'm / s'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FITS file not found: '{path}'")
    try:
        with warnings.catch_warnings():  # truncation gets a clear error below
            warnings.filterwarnings("ignore", "File may have been truncated", AstropyUserWarning)
            hdul = fits.open(path, memmap=True, lazy_load_hdus=True)
    except Exception as err:
        raise ModelFitError(f"{path}: not a readable FITS file ({err})") from err
    with hdul:
        try:
            index = hdul.index_of(hdu)
            h = hdul[index]
        except (IndexError, KeyError) as err:
            raise ModelFitError(
                f"{path}: no HDU {hdu!r}; the file has {_hdu_listing(hdul)}"
            ) from err
        except Exception as err:
            raise ModelFitError(
                f"{path}: corrupt FITS file, cannot read HDU {hdu!r} ({err})"
            ) from err
        source = f"{path}[{index}]"
        kind = type(h).__name__
        compressed = isinstance(h, fits.CompImageHDU)
        if not isinstance(h, (fits.PrimaryHDU, fits.ImageHDU)) or isinstance(h, fits.GroupsHDU):
            raise ModelFitError(
                f"{path}: HDU {index} ({h.name!r}) is a {kind}, not an image; "
                f"the file has {_hdu_listing(hdul)}"
            )
        header = h.header.copy()
        if header.get("NAXIS", 0) == 0:
            raise ModelFitError(
                f"{path}: HDU {index} ({h.name!r}, {kind}) has no data (NAXIS = 0); "
                f"the file has {_hdu_listing(hdul)}"
            )
        wcs = _read_wcs(header, source)
        reader = _FitsReader(str(path.resolve()), index, header, compressed)
        nbytes = abs(header["BITPIX"]) // 8 * int(np.prod(reader.shape))
        if not compressed:
            info = hdul.fileinfo(index)
            size = path.stat().st_size
            if info["datLoc"] + nbytes > size:
                raise ModelFitError(
                    f"{path}: file is truncated: HDU {index} needs {nbytes} data bytes "
                    f"from offset {info['datLoc']} but the file has {size} bytes"
                )
    dims = _layout(wcs, reader.shape, source)
    if chunks is None and nbytes > LAZY_BYTES:
        chunks = "auto"
    if chunks is not None:
        token = tokenize(reader.path, path.stat().st_mtime_ns, index, chunks)
        data = dsa.from_array(
            reader,
            chunks=_dask_chunks(chunks, dims),
            name=f"open_fits-{token}",
            meta=np.empty((0,) * reader.ndim, reader.dtype),
        )
    else:
        data = reader[(slice(None),) * reader.ndim]
    bunit = header.get("BUNIT")
    units = str(bunit).strip() if bunit is not None and str(bunit).strip() else None
    return _assemble(data, wcs, dims, header.tostring(), None, units)


def wcs_of(da: xr.DataArray) -> WCS:
    """Rebuild the astropy WCS of a (possibly sliced or transposed) DataArray.

    The WCS is read back from ``attrs["fits_header"]`` and shifted / strided by
    the ``pix_<dim>`` coordinates, so it fits any ``isel`` with regular slices.
    Its pixel axes are the DataArray dims that carry pixel coordinates, in
    reversed (FITS) order; dims removed by integer ``isel`` are dropped from
    the WCS.

    Parameters
    ----------
    da : xarray.DataArray
        Made by :func:`open_fits` or :func:`from_wcs` (or a selection of it).

    Returns
    -------
    astropy.wcs.WCS

    Examples
    --------
    >>> sub = cube.isel(x=slice(35, 85))
    >>> wcs_of(sub).pixel_to_world(0, 0, 0)  # == wcs.pixel_to_world(35, 0, 0)
    """
    text = da.attrs.get("fits_header")
    if not isinstance(text, str):
        raise ModelFitError(
            "wcs_of: the DataArray has no attrs['fits_header'] (was it made by "
            "open_fits / from_wcs? arithmetic may drop attrs: keep_attrs=True)"
        )
    wcs = _read_wcs(fits.Header.fromstring(text), "wcs_of")
    kept: list[tuple[int, np.ndarray]] = []
    for dim in reversed(da.dims):
        c = da.coords.get(f"pix_{dim}")
        if c is not None and c.dims == (dim,) and "wcs_axis" in c.attrs:
            kept.append((int(c.attrs["wcs_axis"]), np.asarray(c.values)))
    if not kept:
        raise ModelFitError(f"wcs_of: none of the dims {da.dims} has a pix_<dim> coordinate")
    axes = [i for i, _ in kept]
    corr = wcs.axis_correlation_matrix
    for j in set(range(wcs.naxis)) - set(axes):
        if (corr[:, [j]] & corr[:, axes]).any():
            raise ModelFitError(
                f"wcs_of: WCS axis {j + 1} ({wcs.wcs.ctype[j]!r}) was removed (integer isel?) but "
                "is coupled to a kept axis; select it with a length-1 slice instead"
            )
    for i, vals in kept:
        n = len(vals)
        start = int(vals[0]) if n else 0
        step = int(vals[1] - vals[0]) if n > 1 else 1
        if n == 0 or step == 0 or not np.array_equal(vals, start + step * np.arange(n)):
            raise ModelFitError(
                f"wcs_of: the pixel coordinate of WCS axis {i + 1} is not a "
                f"regular slice ({vals[:5]}...); wcs_of needs isel with slices"
            )
        crpix = wcs.wcs.crpix.copy()
        crpix[i] = (crpix[i] - 1 - start) / step + 1
        if step != 1:
            if wcs.sip is not None and i < 2:
                raise ModelFitError(
                    "wcs_of: strided slices of a WCS with SIP distortion are not supported"
                )
            key = "cd" if wcs.wcs.has_cd() else "pc"
            m = wcs.wcs.cd.copy() if key == "cd" else wcs.wcs.get_pc().copy()
            m[:, i] *= step
            setattr(wcs.wcs, key, m)
        wcs.wcs.crpix = crpix
        if wcs.sip is not None:
            s = wcs.sip
            wcs.sip = Sip(s.a, s.b, s.ap, s.bp, crpix[:2])
    if axes != list(range(wcs.naxis)):
        wcs = wcs.sub([i + 1 for i in axes])
    wcs.wcs.set()
    wcs.pixel_shape = [len(v) for _, v in kept]
    return wcs
