"""Use a result: the fitted astropy model, the model on a grid, residuals."""

from __future__ import annotations

import json

import astropy.units as u
import numpy as np
import xarray as xr

from xarray_modelfit.coords import INPUT_DIM, TimeAxis, is_pixel_source, time_kind, world_inputs
from xarray_modelfit.errors import ModelFitError
from xarray_modelfit.kernel.chunk import evaluate_chunk
from xarray_modelfit.params import PARAM_DIM
from xarray_modelfit.results import unit_attrs
from xarray_modelfit.serialize import model_from_json
from xarray_modelfit.units import parse_unit


def is_selection(result: xr.Dataset) -> bool:
    """Whether ``result`` comes from model selection (a list of candidate models)."""
    return "model_candidates" in result.attrs


def _n_candidates(result: xr.Dataset) -> int:
    return len(json.loads(result.attrs["model_candidates"]))


def as_candidate(result: xr.Dataset, k: int) -> xr.Dataset:
    """A model-selection result seen as candidate ``k``'s own result.

    Its parameter maps hold candidate ``k``'s values where it was chosen
    (``fit_model_index == k``) and NaN elsewhere.
    """
    candidates = json.loads(result.attrs["model_candidates"])
    if not 0 <= k < len(candidates):
        raise _candidate_error(f"candidate={k} is not a candidate of this result", len(candidates))
    names = json.loads(result.attrs["candidate_param_names"])[k]
    chosen = result["fit_model_index"] == k
    view = result.assign({n: result[n].where(chosen) for n in names})
    view.attrs = {**result.attrs, "model": candidates[k], "param_names": json.dumps(names)}
    del view.attrs["model_candidates"]
    return view


def _candidate_error(what: str, n: int) -> ModelFitError:
    """The one message for a model-selection result used without a valid ``candidate=k``."""
    return ModelFitError(
        f"{what}: it is a model-selection result of {n} candidate models; pass candidate=k "
        f"(0 to {n - 1}) for one of them"
    )


def _info(result: xr.Dataset, prefix: str):
    attrs = result.attrs
    if is_selection(result):
        raise _candidate_error("this result has no single model", _n_candidates(result))
    if "model" not in attrs:
        raise ModelFitError("this Dataset is not a modelfit result (no 'model' in its attrs)")
    names = json.loads(attrs["param_names"])
    missing = [f"{prefix}{n}" for n in names if f"{prefix}{n}" not in result]
    if missing:
        raise ModelFitError(
            f"result has no variables {missing}; for a Dataset fit pass prefix='{{var}}_'"
        )
    return names, model_from_json(attrs["model"])


def _rename_data(units: dict, model):
    if not int(units.get("model_has_units", 0)):
        return None
    in_units = [
        parse_unit(s) if s else u.dimensionless_unscaled
        for s in json.loads(units["model_input_units"])
    ]
    data_unit = parse_unit(units["model_data_units"] or "")
    rename = {model.inputs[0]: (0,) * in_units[0], model.outputs[0]: (0,) * data_unit}
    if model.n_inputs == 2:
        rename[model.inputs[1]] = (0,) * in_units[1]
    else:
        rename["z"] = None
    return rename


def to_model(result: xr.Dataset, prefix: str = "", candidate: int | None = None):
    """The fitted astropy model, with array parameters over the iterated dims.

    As astropy's ``parallel_fit_dask`` returns it: parameter arrays have the
    shape of the result's maps (dims in ``result[param].dims`` order), units
    restored. For a model-selection result, ``candidate=k`` gives candidate
    ``k``'s model, its parameters NaN where another candidate was chosen.
    """
    if candidate is not None:
        result = as_candidate(result, candidate)
    names, model = _info(result, prefix)
    values = {n: np.asarray(result[f"{prefix}{n}"].values) for n in names}
    model = model.copy()
    model._reset_parameters(**values)
    rename = _rename_data(unit_attrs(result, prefix), model)
    return model if rename is None else model.with_units_from_data(**rename)


def evaluate(result: xr.Dataset, da: xr.DataArray, prefix: str = "") -> xr.DataArray:
    """The fitted model on ``da``'s grid (lazy if either is dask-backed).

    For a model-selection result, each position gets the candidate chosen
    there (NaN where none was).

    ``da`` supplies the coordinates of the fitting dims (it can be the data
    itself, or a DataArray on a finer grid) and is matched to the result's
    iterated dims by name: by position where its labels are the result's
    (repeated labels too), else by label (a subset or reordering of the
    fitted positions). Where the fit's world input was a coordinate or an
    array, ``da`` must have a coordinate along that dim; where it was the
    pixel index, the pixel index is used again, whatever coordinate ``da``
    has.

    Raises
    ------
    ModelFitError
        If ``da`` lacks a fitting dim, or a coordinate along a fitting dim
        whose world input was not the pixel index, or times along one that was
        a time axis; or if ``da``'s labels along an iterated dim are not
        fitted positions, or are repeated in the result (so they do not say
        which fit to use).
    """
    if is_selection(result):
        chosen = _at_positions_of(da, result["fit_model_index"])
        out = None
        for k in range(_n_candidates(result)):
            part = evaluate(as_candidate(result, k), da, prefix)
            out = part if out is None else xr.where(chosen == k, part, out)
        return out.assign_attrs(part.attrs).rename("model")
    names, model = _info(result, prefix)
    units = unit_attrs(result, prefix)
    fit_dims = json.loads(result.attrs["fit_dims"])
    origins = json.loads(result.attrs.get("time_origins", "null")) or [None] * len(fit_dims)
    used = json.loads(result.attrs.get("world_coords", "null")) or [None] * len(fit_dims)
    sources = json.loads(result.attrs.get("world_sources", "null")) or [None] * len(fit_dims)
    coords = {}
    for dim, origin, name, source in zip(fit_dims, origins, used, sources, strict=True):
        _check_grid(da, dim, name, source, origin)
        if source is not None and is_pixel_source(source):  # as the fit: not a coordinate of da
            coords[dim] = np.arange(da.sizes[dim], dtype=np.float64)
            continue
        # the coordinate the fit used, when it was not the dim's own and da has it
        name = name if name is not None and name != dim and name in da.coords else None
        if origin is not None:
            coords[dim] = TimeAxis(name=name, origin=origin.split(" (")[0])
        elif name is not None:
            coords[dim] = name
    worlds = world_inputs(da, fit_dims, coords, warn_calendar=False)
    for dim, origin, world in zip(fit_dims, origins, worlds, strict=True):
        _check_calendar(dim, origin, world.time_origin)
    if int(units.get("model_has_units", 0)):
        targets = json.loads(units["model_input_units"])
        values = []
        for w, t in zip(worlds, targets, strict=True):
            v = w.values
            if w.unit is not None and t:
                v = v.copy(data=w.unit.to(parse_unit(t), v.data))
            values.append(v)
    else:
        values = [w.values for w in worlds]
    template = xr.DataArray(np.zeros([da.sizes[d] for d in fit_dims]), dims=fit_dims)
    world = xr.concat([xr.broadcast(v, template)[0] for v in values], dim=INPUT_DIM)
    params = _at_positions_of(da, xr.concat([result[f"{prefix}{n}"] for n in names], dim=PARAM_DIM))
    if da.chunks is not None:
        params = params.chunk({d: da.chunksizes[d] for d in params.dims if d in da.chunksizes})
    if params.chunks is not None:
        params = params.chunk({PARAM_DIM: -1})
    out = xr.apply_ufunc(
        evaluate_chunk,
        world,
        params,
        input_core_dims=[[INPUT_DIM, *fit_dims], [PARAM_DIM]],
        output_core_dims=[fit_dims],
        dask="parallelized",
        output_dtypes=[np.float64],
        kwargs={"model": model, "n_fit_axes": len(fit_dims)},
        keep_attrs=False,  # not the world coordinate's attrs: the units are set below
    )
    out = out.assign_coords({k: c for k, c in da.coords.items() if set(c.dims) <= set(out.dims)})
    out = out.assign_coords(
        {
            k: c
            for k, c in result.coords.items()
            if set(c.dims) <= set(out.dims) and k not in out.coords
        }
    )
    unit = units.get("model_data_units") or da.attrs.get("units")
    if unit:
        out.attrs["units"] = unit
    out.name = "model"
    return out


def _at_positions_of(da: xr.DataArray, var: xr.DataArray) -> xr.DataArray:
    """``var`` (a map over the result's iterated dims) at ``da``'s positions.

    Along a dim where ``da`` has the result's very labels, positions match by
    place (duplicate labels too); where its labels differ (a subset, another
    order), by label. The matched dims lose their index coordinates: ``var``
    then lines up with ``da`` by position, and the output takes ``da``'s.
    """
    var = var.drop_vars([c for c in var.coords if c not in var.indexes])
    shared = [d for d in var.dims if d in da.indexes and d in var.indexes]
    positions = {}
    for d in shared:
        labels, index = da.indexes[d], var.indexes[d]
        if labels.equals(index):
            continue
        repeated = index.duplicated(keep=False)
        ambiguous = labels[labels.isin(index[repeated])].unique()
        if len(ambiguous):
            raise ModelFitError(
                f"evaluate: da's labels along {d!r} are not the result's, and some of them "
                f"({_some(ambiguous)}) label more than one fitted position, so they do not say "
                f"which fit to use; give da the result's {d!r} labels in their order (evaluate "
                f"on the fitted data, then select with .isel)"
            )
        found = index[~repeated].get_indexer(labels)
        if (found < 0).any():
            raise ModelFitError(
                f"evaluate: da has {d!r} labels the result has no fit for: "
                f"{_some(labels[found < 0])}; da's positions must be fitted positions"
            )
        positions[d] = np.flatnonzero(~repeated)[found]
    if positions:
        var = var.isel(positions)  # da may cover a subset of the fitted positions
    return var.drop_vars(shared)


def _some(labels) -> str:
    """Up to five labels of a pandas Index, for a message."""
    shown = [v.item() if hasattr(v, "item") else v for v in labels[:5]]
    return f"{shown}{' ...' if len(labels) > 5 else ''}"


_GREGORIAN = {"standard", "gregorian", "proleptic_gregorian"}


def _calendar(origin: str | None) -> str:
    """The calendar recorded in a time origin (``"... (noleap)"``); datetime64 is Gregorian."""
    name = origin.rsplit(" (", 1)[1].rstrip(")") if origin and " (" in origin else "standard"
    return "standard" if name in _GREGORIAN else name


def _check_calendar(dim, fitted: str | None, here: str | None) -> None:
    """Day counts differ between calendars: the same dates give other world values."""
    if fitted is None or here is None or _calendar(fitted) == _calendar(here):
        return
    from xarray_modelfit.errors import warn

    warn(
        f"evaluate: the fit's time axis along {dim!r} is in the {_calendar(fitted)!r} calendar, "
        f"da's is in the {_calendar(here)!r} calendar; the same dates are other day counts, "
        f"so the model is shifted (convert da's times to the fit's calendar)"
    )


def _check_grid(
    da: xr.DataArray, dim: str, name: str | None, source: str | None, origin: str | None
) -> None:
    """``da`` has the fitting dim, and a coordinate along it unless the fit used the pixel index.

    Along a dim the fit read as a time axis, that coordinate must hold times.
    """
    if dim not in da.dims:
        raise ModelFitError(
            f"evaluate: da has dims {list(da.dims)}, without the fitting dim {dim!r}; give a "
            f"DataArray with every fitting dim"
        )
    if source is None or is_pixel_source(source):
        return
    if dim in da.coords or (name is not None and name in da.coords):
        if origin is not None:
            coord = name if name is not None and name in da.coords else dim
            values = xr.DataArray(da.coords[coord].variable)
            if time_kind(values, f"da's coordinate {coord!r}") is None:
                raise ModelFitError(
                    f"evaluate: the fit's world input along {dim!r} was a time axis "
                    f"({origin}), but da's coordinate {coord!r} along it is not times (dtype "
                    f"{values.dtype}); give da datetime64 or cftime values (or numbers with "
                    f"CF units '<unit> since <date>') along {dim!r}"
                )
        return
    wanted = repr(dim) if name is None or name == dim else f"{name!r} or {dim!r}"
    raise ModelFitError(
        f"evaluate: da has no coordinate {wanted} along the fitting dim {dim!r} (its coordinates "
        f"are {sorted(map(str, da.coords))}), but the fit's world input along {dim!r} was "
        f"{source}, not the pixel index; give da a {dim!r} coordinate in the fit's world units "
        f"(da.assign_coords({{{dim!r}: values}}))"
    )


def residuals(result: xr.Dataset, da: xr.DataArray, prefix: str = "") -> xr.DataArray:
    """``da`` minus the fitted model, on ``da``'s grid."""
    res = da - evaluate(result, da, prefix=prefix)
    res.name = "residual"
    return res
