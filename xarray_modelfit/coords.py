"""World coordinates of the fitting dims: the one place that converts datetimes.

For every model input, :func:`world_inputs` picks a coordinate (the fitting dim's
own coordinate by default, or what ``coords=`` names), turns it into float64
numbers with a unit, and checks it broadcasts against the data. Time axes
(``datetime64``, cftime in any calendar, or numbers with CF units
``"<unit> since <date>"``) become days since an origin (the first time of the
axis by default; :class:`TimeAxis` sets the origin and unit), so periodic and
trend models fit in physical time. Missing times (NaT) become NaN and are left
out of each fit point by point.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import astropy.units as u
import numpy as np
import pandas as pd
import xarray as xr

from xarray_modelfit.errors import ModelFitError, ModelFitTypeError, warn
from xarray_modelfit.units import parse_unit

#: dim that stacks the world inputs of a model with several inputs
INPUT_DIM = "_input"


@dataclass(frozen=True)
class TimeAxis:
    """How a time coordinate becomes a float world axis.

    A ``datetime64`` or cftime coordinate is turned into ``unit`` since
    ``origin``; NaT (or a missing cftime date) becomes NaN, and that point is
    left out of the fit.

    Parameters
    ----------
    name : hashable, optional
        The coordinate to use; default the fitting dim's own coordinate.
    origin : str, datetime-like or cftime datetime, optional
        Time zero of the world axis; default the earliest valid time of the
        axis. A string is an ISO date (``"1900-01-01"``,
        ``"1900-01-01T06:00:00"``) or CF-style ``"<unit> since <date>"``
        (``"yr since 1900-01-01"``), which sets the unit as well. A cftime
        origin is read in the calendar of the axis.
    unit : str or astropy Unit, optional
        Unit of time of the world axis; default days (``"d"``), or the unit
        of a ``"<unit> since <date>"`` origin.

    Examples
    --------
    >>> TimeAxis(origin="1900-01-01", unit="yr").resolved()
    (Unit("yr"), '1900-01-01')
    >>> TimeAxis(origin="hours since 2000-01-01 12:00").resolved()
    (Unit("h"), '2000-01-01 12:00')
    """

    name: Hashable | None = None
    origin: Any = None
    unit: str | u.UnitBase | None = None

    def __post_init__(self) -> None:
        self.resolved()

    def resolved(self) -> tuple[u.UnitBase, Any]:
        """The unit of the world axis and the origin without its unit.

        Returns
        -------
        unit : astropy Unit
            A unit of time.
        origin : str, datetime-like or None
            The origin as given, with a ``"<unit> since "`` prefix removed.

        Raises
        ------
        ModelFitError
            If the unit is not a unit of time, or a ``"<unit> since"`` origin
            disagrees with ``unit``.
        """
        unit = None if self.unit is None else _time_unit(self.unit, "TimeAxis unit")
        origin = self.origin
        if isinstance(origin, str):
            match = _SINCE.match(origin)
            if match:
                since = _time_unit(match.group(1), f"TimeAxis origin {origin!r}:")
                if unit is not None and since != unit:
                    raise ModelFitError(
                        f"TimeAxis origin {origin!r} says {since} but unit={self.unit!r}; "
                        "give the unit once"
                    )
                unit, origin = since, match.group(2).strip()
        elif origin is not None and not _is_datetime_like(origin):
            raise ModelFitTypeError(
                "TimeAxis origin must be a date string, a datetime, a numpy datetime64 or a "
                f"cftime datetime, got {type(origin).__name__} {origin!r}"
            )
        return (u.day if unit is None else unit), origin


@dataclass(frozen=True)
class World:
    """One model input: float64 values over (a subset of) the data's dims.

    ``time_origin`` is set for time axes: ``"<unit> since <origin>"`` plus
    ``" (<calendar>)"`` for cftime, which ``TimeAxis(origin=...)`` reads back
    (without the calendar) to rebuild the same axis.
    """

    values: xr.DataArray
    unit: u.UnitBase | None
    source: str  # where it came from, for messages and attrs
    time_origin: str | None = None
    coord: Hashable | None = None  # the coordinate used, if it was one of the data's


def world_inputs(
    obj: xr.DataArray,
    dims: Sequence[Hashable],
    coords: Mapping | None,
    *,
    warn_calendar: bool = True,
) -> list[World]:
    """The world input of every fitting dim, in the model's input order.

    ``warn_calendar=False`` silences the warning about years on calendars whose
    year is not the Julian year (given once, when fitting).
    """
    coords = dict(coords or {})
    unknown = set(coords) - set(dims)
    if unknown:
        raise ModelFitError(
            f"coords has entries for {sorted(map(str, unknown))}, which are not fitting dims "
            f"{list(dims)}; give one entry per fitting dim"
        )
    return [
        dataclasses.replace(
            _one_input(obj, dim, coords.get(dim), warn_calendar),
            coord=_coord_name(obj, dim, coords.get(dim)),
        )
        for dim in dims
    ]


_PIXEL_SOURCE = "pixel index along"


def world_ranges(world: xr.DataArray, fit_dims) -> tuple[list, list, list]:
    """Per model input of the stacked world array: its min, max and typical spacing.

    The spacing is the median non-zero step along the fitting dims only (a
    coordinate that also varies per position does not shrink it); 1 when there
    is none. An input with no finite value has NaN for its range.
    """
    lo, hi, step = [], [], []
    for i in range(world.sizes[INPUT_DIM]):
        w = world.isel({INPUT_DIM: i})
        v = np.asarray(w.values, dtype=float)
        finite = np.isfinite(v).any()
        lo.append(float(np.nanmin(v)) if finite else np.nan)
        hi.append(float(np.nanmax(v)) if finite else np.nan)
        d = np.concatenate([np.abs(np.diff(v, axis=w.get_axis_num(d))).ravel() for d in fit_dims])
        d = d[np.isfinite(d) & (d > 0)]
        step.append(float(np.median(d)) if d.size else 1.0)
    return lo, hi, step


def is_pixel_source(source: str) -> bool:
    """Whether a :attr:`World.source` (``attrs["world_sources"]``) is the pixel index."""
    return source.startswith(_PIXEL_SOURCE)


def _coord_name(obj: xr.DataArray, dim: Hashable, spec: Any) -> Hashable | None:
    """The name of the data's coordinate that ``spec`` selects (None for arrays, pixels)."""
    if isinstance(spec, TimeAxis):
        spec = spec.name
    if spec is None:
        return dim if dim in obj.coords else None
    if _is_name(spec):
        return spec if spec in obj.coords else None
    return None


def _is_name(spec: Any) -> bool:
    """Whether ``spec`` can name a coordinate (not an array, Quantity, number or tuple)."""
    return isinstance(spec, Hashable) and not isinstance(spec, int | float | tuple | np.ndarray)


def _one_input(obj: xr.DataArray, dim: Hashable, spec: Any, warn_calendar: bool = True) -> World:
    time = None
    if isinstance(spec, TimeAxis):
        time, spec = spec, spec.name
    if spec is None:
        if dim in obj.coords:
            da, source = obj.coords[dim].variable, f"coordinate {dim!r}"
            da = xr.DataArray(da)
        elif time is not None:
            raise ModelFitError(
                f"coords[{dim!r}] is a TimeAxis, but the data has no coordinate {dim!r}; "
                "give the time coordinate's name: TimeAxis(name=...)"
            )
        else:
            da = xr.DataArray(np.arange(obj.sizes[dim], dtype=float), dims=(dim,))
            return World(da, None, f"{_PIXEL_SOURCE} {dim!r}")
    elif isinstance(spec, str) or (_is_name(spec) and spec in obj.coords):
        if spec not in obj.coords:
            raise ModelFitError(
                f"coords[{dim!r}] names {spec!r}, which is not a coordinate of the data; "
                f"available: {sorted(map(str, obj.coords))}"
            )
        da, source = xr.DataArray(obj.coords[spec].variable), f"coordinate {spec!r}"
    elif isinstance(spec, xr.DataArray):
        da, source = spec, f"coords[{dim!r}] DataArray"
    elif isinstance(spec, np.ndarray | list | tuple):
        arr = spec.value if isinstance(spec, u.Quantity) else np.asarray(spec)
        if arr.ndim != 1:
            raise ModelFitError(
                f"coords[{dim!r}] is a {arr.ndim}-d array; a plain array must be 1-d with "
                f"length {obj.sizes[dim]} (pass a DataArray with named dims for N-d coordinates)"
            )
        da, source = xr.DataArray(arr, dims=(dim,)), f"coords[{dim!r}] array"
    else:
        raise ModelFitTypeError(
            f"coords[{dim!r}] must be a coordinate name, an array or a DataArray, "
            f"got {type(spec).__name__}"
        )
    _check_dims(obj, dim, da, source)
    if isinstance(spec, u.Quantity):
        da = da.assign_attrs(units=spec.unit.to_string())
    elif isinstance(da.data, u.Quantity):  # a DataArray wrapping a Quantity: its unit counts
        da = da.copy(data=da.data.value).assign_attrs(units=da.data.unit.to_string())
    kind = time_kind(da, source)
    if kind is not None:
        return _time_world(da, time or TimeAxis(), source, kind, warn_calendar)
    if time is not None:
        raise ModelFitError(
            f"coords[{dim!r}] is a TimeAxis, but {source} is not a time axis (dtype {da.dtype}); "
            "a TimeAxis needs datetime64 or cftime values"
        )
    if not np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.complexfloating):
        raise ModelFitTypeError(
            f"{source} has dtype {da.dtype}; world coordinates must be real numbers or times"
        )
    unit = parse_unit(da.attrs.get("units"), what=f"{source} attrs['units']")
    return World(da.astype(np.float64), unit, source)


def _check_dims(obj: xr.DataArray, dim: Hashable, da: xr.DataArray, source: str) -> None:
    from xarray_modelfit._validate import check_dims_of_data

    check_dims_of_data(da, obj, source)
    if dim not in da.dims:
        raise ModelFitError(
            f"{source} does not vary along the fitting dim {dim!r} (dims {list(da.dims)})"
        )


_SINCE = re.compile(r"^\s*([A-Za-z_][A-Za-z_ ]*?)\s+since\s+(\S.*)$")


def _time_unit(value: Any, what: str) -> u.UnitBase:
    unit = parse_unit(value, what=what)
    if unit.physical_type != "time":
        raise ModelFitError(f"{what} {value!r} is not a unit of time (it is {unit.physical_type})")
    return unit


def _is_datetime_like(value: Any) -> bool:
    return isinstance(value, np.datetime64 | datetime.datetime | datetime.date) or (
        hasattr(value, "calendar") and hasattr(value, "timetuple")
    )


def _is_missing(value: Any) -> bool:
    """None, NaN, NaT (numpy or pandas): a missing time in an object array."""
    return value is None or (np.ndim(value) == 0 and bool(pd.isna(value)))


def time_kind(da: xr.DataArray, source: str) -> str | None:
    """``"datetime64"``, ``"cftime"``, ``"cf_numeric"`` (numbers in "<unit> since"), or None."""
    if np.issubdtype(da.dtype, np.datetime64):
        return "datetime64"
    if np.issubdtype(da.dtype, np.number):
        units = da.attrs.get("units")
        return "cf_numeric" if isinstance(units, str) and _SINCE.match(units) else None
    if da.dtype != object or not da.size:
        return None
    present = [v for v in da.values.flat if not _is_missing(v)]
    if not present:
        raise ModelFitError(
            f"{source} holds only missing times (NaT/None); there is no time axis to fit along"
        )
    first = present[0]
    if hasattr(first, "calendar") and hasattr(first, "timetuple"):
        return "cftime"
    if isinstance(first, datetime.datetime | datetime.date | np.datetime64):
        return "object_datetime"
    return None


def _decode_cf_numeric(da: xr.DataArray, source: str) -> xr.DataArray:
    """Numbers with CF units ``"<unit> since <date>"`` as cftime datetimes."""
    import cftime

    units = da.attrs["units"]
    calendar = da.attrs.get("calendar", da.encoding.get("calendar", "standard"))
    values = np.ma.masked_invalid(np.asarray(da.values, dtype=np.float64))
    try:
        dates = cftime.num2date(values, units, calendar=calendar, only_use_cftime_datetimes=True)
    except (ValueError, TypeError) as exc:
        raise ModelFitError(
            f"{source} has attrs['units'] {units!r} (calendar {calendar!r}), which cannot be "
            f"read as a CF time axis: {exc}"
        ) from None
    dates = np.ma.filled(np.ma.asarray(dates, dtype=object), None)
    return da.copy(data=np.asarray(dates, dtype=object).reshape(da.shape))


def _iso_datetime64(value: np.datetime64) -> str:
    seconds = value.astype("datetime64[s]")
    exact = seconds.astype(value.dtype) == value
    return str(np.datetime_as_string(seconds if exact else value))


def _origin_datetime64(origin: Any, source: str) -> np.datetime64:
    if isinstance(origin, np.datetime64):
        result = origin
    elif hasattr(origin, "calendar") and hasattr(origin, "isoformat"):
        result = _parse_datetime64(origin.isoformat(), source)
    elif isinstance(origin, datetime.datetime | datetime.date):
        result = np.datetime64(origin)
    else:
        result = _parse_datetime64(str(origin), source)
    if np.isnat(result):
        raise ModelFitError(f"the TimeAxis origin of {source} is NaT")
    return result


def _parse_datetime64(text: str, source: str) -> np.datetime64:
    try:
        return np.datetime64(text.strip())
    except ValueError:
        pass
    try:  # CF-style spellings numpy does not read ("1900-1-1", "1900-01-01 6:00")
        return np.datetime64(_parse_cftime(text, "proleptic_gregorian", source).isoformat())
    except ModelFitError:
        raise ModelFitError(
            f"TimeAxis origin {text!r} for {source} is not a date (use ISO 8601, e.g. "
            "'1900-01-01' or '1900-01-01T06:00:00')"
        ) from None


def _parse_cftime(text: str, calendar: str, source: str) -> Any:
    import cftime

    try:
        return cftime.num2date(0, f"days since {text.strip()}", calendar=calendar)
    except (ValueError, TypeError) as exc:
        raise ModelFitError(
            f"TimeAxis origin {text!r} for {source} is not a date in the {calendar!r} "
            f"calendar: {exc}"
        ) from None


def _origin_cftime(origin: Any, calendar: str, source: str) -> Any:
    if hasattr(origin, "calendar") and getattr(origin, "calendar", None) == calendar:
        return origin
    if isinstance(origin, np.datetime64):
        if np.isnat(origin):
            raise ModelFitError(f"the TimeAxis origin of {source} is NaT")
        text = str(np.datetime_as_string(origin))
    elif hasattr(origin, "isoformat"):
        text = origin.isoformat()
    else:
        text = str(origin)
    return _parse_cftime(text, calendar, source)


def _datetime64_days(values: np.ndarray, origin: Any, source: str) -> tuple[np.ndarray, str]:
    """Days since ``origin`` (default the earliest time) of datetime64 values; NaT -> NaN."""
    finite = ~np.isnat(values)
    if not finite.any():
        raise ModelFitError(
            f"{source} holds only NaT (no valid time); there is no time axis to fit along"
        )
    zero = values[finite].min() if origin is None else _origin_datetime64(origin, source)
    same = zero.astype(values.dtype)
    if not np.isnat(same) and same.astype(zero.dtype) == zero:
        # exact integer arithmetic in the axis' own resolution
        days = (values - same) / np.timedelta64(1, "D")
    else:
        # origin out of range of (or finer than) the axis' resolution: in float days
        days = _float_days(values) - _float_days(np.asarray(zero))
    return np.where(finite, days, np.nan), _iso_datetime64(zero)


def _float_days(values: np.ndarray) -> np.ndarray:
    resolution = np.datetime_data(values.dtype)
    per_day = np.timedelta64(1, "D") / np.timedelta64(1, resolution)
    return values.astype(np.int64) / per_day


def _cftime_days(values: np.ndarray, origin: Any, source: str) -> tuple[np.ndarray, str, str]:
    """Days since ``origin`` of cftime datetimes (None/NaN/NaT -> NaN), and the calendar."""
    flat = values.ravel()
    valid = np.array([not _is_missing(v) for v in flat], dtype=bool)
    if not valid.any():
        raise ModelFitError(
            f"{source} holds only missing times (NaT/None); there is no time axis to fit along"
        )
    present = flat[valid]
    calendars = sorted({getattr(v, "calendar", "?") for v in present})
    if len(calendars) > 1:
        raise ModelFitError(f"{source} mixes calendars {calendars}; use one calendar per axis")
    calendar = calendars[0]
    zero = min(present) if origin is None else _origin_cftime(origin, calendar, source)
    one_day = datetime.timedelta(days=1)
    days = np.full(flat.shape, np.nan)
    try:
        days[valid] = [(v - zero) / one_day for v in present]
    except TypeError as exc:
        raise ModelFitError(f"{source}: cannot take times relative to {zero!r}: {exc}") from None
    return days.reshape(values.shape), zero.isoformat(), calendar


def _time_world(
    da: xr.DataArray, time: TimeAxis, source: str, kind: str, warn_calendar: bool = True
) -> World:
    unit, origin = time.resolved()
    if kind == "cf_numeric":
        da, kind = _decode_cf_numeric(da, source), "cftime"
    values = da.values
    if kind == "object_datetime":
        values = np.array(
            [np.datetime64("NaT") if _is_missing(v) else np.datetime64(v) for v in values.flat]
        ).reshape(values.shape)
        kind = "datetime64"
    if kind == "datetime64":
        days, origin_text = _datetime64_days(values, origin, source)
        calendar = None
    else:
        days, origin_text, calendar = _cftime_days(values, origin, source)
        if warn_calendar:
            _warn_calendar_year(unit, calendar, source)
    # "<unit> since <origin>" reproduces this axis: TimeAxis(origin=<that text>)
    record = f"{_UNIT_WORDS.get(unit, unit.to_string())} since {origin_text}"
    if calendar is not None:
        record += f" ({calendar})"
    out = xr.DataArray(u.day.to(unit, days), dims=da.dims)
    return World(out, unit, source, time_origin=record)


_UNIT_WORDS = {u.day: "days", u.h: "hours", u.min: "minutes", u.s: "seconds"}

#: days in a year of the cftime calendars whose mean year is not about 365.25 days
_CALENDAR_YEAR_DAYS = {
    "noleap": 365,
    "365_day": 365,
    "all_leap": 366,
    "366_day": 366,
    "360_day": 360,
}


def _warn_calendar_year(unit: u.UnitBase, calendar: str, source: str) -> None:
    """Warn when a unit of whole Julian years meets a calendar with another year length.

    astropy's ``yr`` is 365.25 days; on a 360-day or 365-day calendar a model
    periodic in such years drifts out of phase with the calendar's seasons.
    """
    year_days = _CALENDAR_YEAR_DAYS.get(calendar)
    years = float(unit.to(u.yr))
    if year_days is None or years < 1 or abs(years - round(years)) > 1e-9:
        return
    warn(
        f"{source} is in the {calendar!r} calendar, whose year is {year_days} days, but the "
        f"TimeAxis unit {unit.to_string()!r} counts Julian years of 365.25 days: a model "
        f"periodic in years drifts {abs(365.25 - year_days):g} days a year out of phase with "
        f"the calendar's seasons. Use days (the default unit) and the calendar's year: "
        f"frequency=1 / {year_days} per day for an annual cycle (slopes come out per day)"
    )
