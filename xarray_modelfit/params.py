"""Initial values and bounds: from user input to aligned ``param`` arrays.

``p0`` and ``bounds`` may be scalars, Quantities, arrays broadcastable to the
iterated shape, or DataArrays over some of the iterated dims (per-pixel guesses).
They are merged with the model's own values and bounds and stacked into
DataArrays with a trailing ``param`` dim, so one array of each kind travels to
the kernel whatever the number of parameters.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import astropy.units as u
import numpy as np
import xarray as xr

from xarray_modelfit._validate import align_labels
from xarray_modelfit.coords import world_ranges
from xarray_modelfit.errors import ModelFitError, ModelFitTypeError
from xarray_modelfit.kernel.block import free_mask
from xarray_modelfit.units import to_param_unit

PARAM_DIM = "param"


def _check_names(kind: str, given: Mapping, param_names: Sequence[str]) -> None:
    unknown = [k for k in given if k not in param_names]
    if unknown:
        raise ModelFitError(
            f"{kind} has entries for {unknown}, which are not parameters of the model; "
            f"expected names from {list(param_names)}"
        )


def _as_iterated(
    value: Any,
    *,
    what: str,
    unit: u.UnitBase | None,
    iter_dims: Sequence[Hashable],
    iter_shape: Sequence[int],
) -> xr.DataArray:
    """A value as a float64 DataArray over a subset of the iterated dims."""
    if isinstance(value, xr.DataArray):
        bad = [d for d in value.dims if d not in iter_dims]
        if bad:
            raise ModelFitError(
                f"{what} has unexpected dimensions {list(value.dims)}. It should only have "
                f"dimensions that are in the iterated dims {list(iter_dims)}"
            )
        for d in value.dims:
            if value.sizes[d] != iter_shape[list(iter_dims).index(d)]:
                raise ModelFitError(
                    f"{what} has length {value.sizes[d]} along {d!r}; the data has "
                    f"{iter_shape[list(iter_dims).index(d)]}"
                )
        data = value.data
        if unit is not None and "units" in value.attrs and not isinstance(data, u.Quantity):
            data = data * _parse(value.attrs["units"], what)
        if isinstance(data, u.Quantity):
            data = to_param_unit(data, unit, what=what)
        out = value.copy(data=data).astype(np.float64)
        return out.drop_vars(list(out.coords)) if out.coords else out
    if not isinstance(value, u.Quantity | np.ndarray | int | float | np.number | list | tuple):
        raise ModelFitTypeError(
            f"{what} must be a number, a Quantity, an array or a DataArray, got {type(value).__name__}"
        )
    arr = (
        to_param_unit(value, unit, what=what)
        if isinstance(value, u.Quantity)
        else np.asarray(value)
    )
    if not np.issubdtype(arr.dtype, np.number):
        raise ModelFitTypeError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 0:
        return xr.DataArray(arr)
    try:
        np.broadcast_shapes(arr.shape, tuple(iter_shape))
    except ValueError:
        raise ModelFitError(
            f"{what} has shape {arr.shape}, which does not broadcast to the iterated shape "
            f"{tuple(iter_shape)} (dims {list(iter_dims)})"
        ) from None
    dims = list(iter_dims)[len(iter_dims) - arr.ndim :]
    squeeze = [i for i, n in enumerate(arr.shape) if n == 1]
    arr = np.squeeze(arr, axis=tuple(squeeze))
    return xr.DataArray(arr, dims=[d for i, d in enumerate(dims) if i not in squeeze])


def _parse(units, what):
    from xarray_modelfit.units import parse_unit

    return parse_unit(units, what=f"{what} attrs['units']")


def initial_values(
    model,
    p0: Mapping[str, Any] | None,
    param_units: Mapping[str, u.UnitBase | None],
    iter_dims: Sequence[Hashable],
    iter_shape: Sequence[int],
) -> xr.DataArray:
    """Initial values of all parameters as a DataArray ending in ``param``.

    ``model`` is the unitless model; its parameter values (scalars or arrays
    broadcastable to the iterated shape, as in astropy) are the defaults.
    """
    if p0 is not None and not isinstance(p0, Mapping):
        raise ModelFitTypeError(
            f"p0 must be a mapping of parameter name to value, got {type(p0).__name__}"
        )
    p0 = dict(p0 or {})
    _check_names("p0", p0, model.param_names)
    parts = []
    for name in model.param_names:
        if name in p0:
            value, unit = p0[name], param_units.get(name)
        else:
            value, unit = getattr(model, name).value, None
        parts.append(
            _as_iterated(
                value, what=f"p0[{name!r}]", unit=unit, iter_dims=iter_dims, iter_shape=iter_shape
            )
        )
    return _stack(parts, model.param_names)


def bounds_arrays(
    model,
    bounds: Mapping[str, Any] | None,
    param_units: Mapping[str, u.UnitBase | None],
    iter_dims: Sequence[Hashable],
    iter_shape: Sequence[int],
) -> tuple[xr.DataArray, xr.DataArray]:
    """Lower and upper bounds of all parameters (``-inf``/``inf`` when open)."""
    if bounds is not None and not isinstance(bounds, Mapping):
        raise ModelFitTypeError(
            f"bounds must be a mapping of parameter name to (lo, hi), got {type(bounds).__name__}"
        )
    bounds = dict(bounds or {})
    _check_names("bounds", bounds, model.param_names)
    lows, highs = [], []
    for name in model.param_names:
        if name in bounds:
            pair = bounds[name]
            unit = param_units.get(name)
            if isinstance(pair, u.Quantity) and pair.shape[:1] == (2,):
                pair = (pair[0], pair[1])
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise ModelFitError(f"bounds[{name!r}] must be a pair (lo, hi), got {pair!r}")
            lo, hi = pair
        else:
            lo, hi = getattr(model, name).bounds
            unit = None
        lo_da = _bound(lo, -np.inf, f"bounds[{name!r}][0]", unit, iter_dims, iter_shape)
        hi_da = _bound(hi, np.inf, f"bounds[{name!r}][1]", unit, iter_dims, iter_shape)
        bad = lo_da > hi_da
        if bool(bad.any()):
            raise ModelFitError(
                f"bounds[{name!r}] has lower > upper ({_first(lo_da, bad)} > {_first(hi_da, bad)})"
            )
        lows.append(lo_da)
        highs.append(hi_da)
    _check_something_free(model, lows, highs)
    return _stack(lows, model.param_names), _stack(highs, model.param_names)


def _check_something_free(model, lows, highs) -> None:
    """Equal bounds pin a parameter; if they pin every free one everywhere, nothing is fitted."""
    free = np.flatnonzero(free_mask(model))
    if free.size and all(bool((lows[j] == highs[j]).all()) for j in free):
        raise ModelFitError(
            "bounds pin every free parameter (lower == upper everywhere): there is nothing "
            "to fit (use .modelfit.evaluate on a result, or widen a bound)"
        )


def _bound(value, open_value, what, unit, iter_dims, iter_shape) -> xr.DataArray:
    if value is None:
        return xr.DataArray(np.float64(open_value))
    da = _as_iterated(value, what=what, unit=unit, iter_dims=iter_dims, iter_shape=iter_shape)
    return da.fillna(open_value)


def _first(da: xr.DataArray, where: xr.DataArray) -> float:
    return float(da.broadcast_like(where).values[where.broadcast_like(da).values][0])


def _stack(parts: list[xr.DataArray], names: Sequence[str]) -> xr.DataArray:
    out = xr.concat(parts, dim=PARAM_DIM, coords="minimal", compat="override", join="exact")
    if out.chunks is not None:
        out = out.chunk({PARAM_DIM: -1})
    return out.assign_coords({PARAM_DIM: list(names)})


def aligned_maps(p0, bounds, obj: xr.DataArray):
    """``p0`` and ``bounds`` with their DataArrays in the data's label order."""
    if isinstance(p0, Mapping):
        p0 = {k: align_labels(v, obj, f"p0[{k!r}]") for k, v in p0.items()}
    if isinstance(bounds, Mapping):
        bounds = {
            k: tuple(align_labels(b, obj, f"bounds[{k!r}]") for b in v)
            if isinstance(v, tuple | list)
            else v
            for k, v in bounds.items()
        }
    return p0, bounds


def axis_bounds(model, world: xr.DataArray, fit_dims) -> tuple[dict, float]:
    """``bounds="auto"``: peak positions on the axes, widths from half a step to the span.

    Also returns the smallest step, by which initial values are moved inside.
    """
    from xarray_modelfit.errors import warn
    from xarray_modelfit.kernel.guess import axis_bounds as peak_bounds

    lo, hi, step = world_ranges(world, fit_dims)
    bounds = peak_bounds(model, lo, hi, step)
    if not bounds:
        warn(
            f"bounds='auto' bounds nothing in {model.name or type(model).__name__}: it knows the "
            f"positions and widths of {', '.join(known_peaks())} and of sums of them"
        )
    return bounds, min(step)


def known_peaks() -> list[str]:
    from xarray_modelfit.kernel.guess import AXIS_ROLES

    return sorted(AXIS_ROLES)
