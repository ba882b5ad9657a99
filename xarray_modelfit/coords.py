"""World coordinates of the fitting dims: the one place that converts datetimes.

For every model input, :func:`world_inputs` picks a coordinate (the fitting dim's
own coordinate by default, or what ``coords=`` names), turns it into float64
numbers with a unit, and checks it broadcasts against the data. Datetime axes
(``datetime64`` or cftime) become days since an origin (the first time of the
axis by default), so periodic and trend models fit in physical time.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np
import xarray as xr

from xarray_modelfit.errors import ModelFitError, ModelFitTypeError
from xarray_modelfit.units import parse_unit


@dataclass(frozen=True)
class TimeAxis:
    """How a time coordinate becomes a float world axis.

    Pass as ``coords={"time": TimeAxis(origin="1900-01-01", unit="yr")}``, or
    ``TimeAxis(name="valid_time")`` to use another coordinate.
    """

    name: Hashable | None = None
    origin: Any = None
    unit: str = "d"


@dataclass(frozen=True)
class World:
    """One model input: float64 values over (a subset of) the data's dims."""

    values: xr.DataArray
    unit: u.UnitBase | None
    source: str  # where it came from, for messages and attrs
    time_origin: str | None = None


def world_inputs(
    obj: xr.DataArray, dims: Sequence[Hashable], coords: Mapping | None
) -> list[World]:
    """The world input of every fitting dim, in the model's input order."""
    coords = dict(coords or {})
    unknown = set(coords) - set(dims)
    if unknown:
        raise ModelFitError(
            f"coords has entries for {sorted(map(str, unknown))}, which are not fitting dims "
            f"{list(dims)}; give one entry per fitting dim"
        )
    return [_one_input(obj, dim, coords.get(dim)) for dim in dims]


def _one_input(obj: xr.DataArray, dim: Hashable, spec: Any) -> World:
    time = None
    if isinstance(spec, TimeAxis):
        time, spec = spec, spec.name
    if spec is None:
        if dim in obj.coords:
            da, source = obj.coords[dim].variable, f"coordinate {dim!r}"
            da = xr.DataArray(da)
        else:
            da = xr.DataArray(np.arange(obj.sizes[dim], dtype=float), dims=(dim,))
            return World(da, None, f"pixel index along {dim!r}")
    elif isinstance(spec, str) or (
        isinstance(spec, Hashable)
        and not isinstance(spec, int | float | tuple)
        and spec in obj.coords
    ):
        if spec not in obj.coords:
            raise ModelFitError(
                f"coords[{dim!r}] names {spec!r}, which is not a coordinate of the data; "
                f"available: {sorted(map(str, obj.coords))}"
            )
        da, source = xr.DataArray(obj.coords[spec].variable), f"coordinate {spec!r}"
    elif isinstance(spec, xr.DataArray):
        da, source = spec, f"coords[{dim!r}] DataArray"
    elif isinstance(spec, np.ndarray | list | tuple | u.Quantity):
        arr = spec if isinstance(spec, u.Quantity) else np.asarray(spec)
        if arr.ndim != 1:
            raise ModelFitError(
                f"coords[{dim!r}] is a {arr.ndim}-d array; a plain array must be 1-d with "
                f"length {obj.sizes[dim]} (pass a DataArray with named dims for N-d coordinates)"
            )
        da, source = xr.DataArray(arr, dims=(dim,)), f"coords[{dim!r}] array"
        if isinstance(spec, u.Quantity):
            da = xr.DataArray(spec.value, dims=(dim,), attrs={"units": spec.unit.to_string()})
    else:
        raise ModelFitTypeError(
            f"coords[{dim!r}] must be a coordinate name, an array or a DataArray, "
            f"got {type(spec).__name__}"
        )
    _check_dims(obj, dim, da, source)
    if isinstance(da.data, u.Quantity):
        da = da.copy(data=da.data.value)
    if _is_time(da):
        return _time_world(da, time or TimeAxis(), source)
    if not np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.complexfloating):
        raise ModelFitTypeError(
            f"{source} has dtype {da.dtype}; world coordinates must be real numbers or times"
        )
    unit = parse_unit(da.attrs.get("units"), what=f"{source} attrs['units']")
    return World(da.astype(np.float64), unit, source)


def _check_dims(obj: xr.DataArray, dim: Hashable, da: xr.DataArray, source: str) -> None:
    extra = [d for d in da.dims if d not in obj.dims]
    if extra:
        raise ModelFitError(
            f"{source} has dims {list(da.dims)}, but {extra} are not dims of the data "
            f"{list(obj.dims)}"
        )
    if dim not in da.dims:
        raise ModelFitError(
            f"{source} does not vary along the fitting dim {dim!r} (dims {list(da.dims)})"
        )
    for d in da.dims:
        if da.sizes[d] != obj.sizes[d]:
            raise ModelFitError(
                f"{source} has length {da.sizes[d]} along {d!r}, but the data has length "
                f"{obj.sizes[d]}"
            )


def _is_time(da: xr.DataArray) -> bool:
    if np.issubdtype(da.dtype, np.datetime64):
        return True
    if da.dtype == object and da.size:
        first = da.values.flat[0]
        return hasattr(first, "calendar") and hasattr(first, "timetuple")
    return False


def _time_world(da: xr.DataArray, time: TimeAxis, source: str) -> World:
    unit = parse_unit(time.unit, what="TimeAxis unit")
    if unit.physical_type != "time":
        raise ModelFitError(f"TimeAxis unit must be a unit of time, got {time.unit!r}")
    if np.issubdtype(da.dtype, np.datetime64):
        values = da.values.astype("datetime64[ns]")
        finite = ~np.isnat(values)
        if not finite.any():
            raise ModelFitError(f"{source} holds only NaT; there is no time axis to fit along")
        origin = (
            np.datetime64(time.origin, "ns") if time.origin is not None else values[finite].min()
        )
        days = np.where(finite, (values - origin) / np.timedelta64(1, "D"), np.nan)
        origin_str = str(np.datetime_as_string(origin, unit="s"))
    else:
        import cftime

        flat = da.values.ravel()
        valid = [v for v in flat if v is not None]
        if not valid:
            raise ModelFitError(f"{source} holds no valid times")
        calendar = valid[0].calendar
        origin = time.origin if time.origin is not None else min(valid)
        if isinstance(origin, str):
            origin = cftime.datetime.strptime(
                origin[:19],
                "%Y-%m-%d" if len(origin) <= 10 else "%Y-%m-%dT%H:%M:%S",
                calendar=calendar,
            )
        ref = f"days since {origin.strftime('%Y-%m-%d %H:%M:%S')}"
        days = np.array(
            [np.nan if v is None else cftime.date2num(v, ref, calendar=calendar) for v in flat],
            dtype=float,
        ).reshape(da.shape)
        origin_str = f"{origin.isoformat()} ({calendar})"
    values = u.day.to(unit, days)
    out = xr.DataArray(values, dims=da.dims)
    return World(out, unit, source, time_origin=origin_str)
