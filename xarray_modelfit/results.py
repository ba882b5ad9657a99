"""Kernel output -> Dataset, and back: the one place that names output variables.

Layout of a result (for a Dataset input every name is prefixed ``{var}_``):

- one variable per parameter, named exactly ``model.param_names``;
- ``{param}_stderr``;
- ``fit_status`` (CF flags), ``fit_chi2``, ``fit_redchi2``, ``fit_dof``,
  ``fit_npoints``, ``fit_nfev``, ``fit_aic``, ``fit_bic``, ``fit_rsquared``,
  ``fit_at_bound`` and,
  on request, ``fit_covariance`` over ``(param, param_j)``;
- attrs: engine, fitter, fitted dims, the model as JSON, units and counts. For a
  Dataset input the unit attrs of each variable's fit are kept as
  ``{var}_model_data_units`` ... (:data:`UNIT_ATTRS`); the unprefixed ones
  only when every variable agrees.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

from xarray_modelfit.kernel.chunk import OutputLayout
from xarray_modelfit.kernel.status import Status, flag_attrs
from xarray_modelfit.params import PARAM_DIM
from xarray_modelfit.serialize import model_to_json
from xarray_modelfit.units import unit_string

PARAM_J_DIM = "param_j"
DIAGNOSTIC_VARS = (
    "fit_status",
    "fit_chi2",
    "fit_redchi2",
    "fit_dof",
    "fit_npoints",
    "fit_nfev",
    "fit_aic",
    "fit_bic",
    "fit_rsquared",
    "fit_at_bound",
)
#: attrs that describe one variable's units: prefixed ``{var}_`` for a Dataset input
UNIT_ATTRS = ("model_input_units", "model_data_units", "model_has_units")


def stderr_name(param: str) -> str:
    return f"{param}_stderr"


def assemble(
    packed: xr.DataArray,
    *,
    obj: xr.DataArray,
    layout: OutputLayout,
    model,
    unitless,
    units_ctx,
    fit_dims: Sequence[Hashable],
    worlds,
    fitter,
    engine: str,
) -> xr.Dataset:
    """Unpack the kernel's packed output into the result Dataset."""
    out_dim = packed.dims[-1]
    packed = packed.drop_attrs()

    def take(key):
        return packed.isel({out_dim: layout.slice_of(key)})

    names = list(unitless.param_names)
    data_vars: dict[str, xr.DataArray] = {}
    params, stderr = take("params"), take("stderr")
    for j, name in enumerate(names):
        unit = unit_string(units_ctx.param_units.get(name))
        attrs = {"long_name": f"fitted {name}"} | ({"units": unit} if unit else {})
        data_vars[name] = params.isel({out_dim: j}, drop=True).assign_attrs(attrs)
        data_vars[stderr_name(name)] = stderr.isel({out_dim: j}, drop=True).assign_attrs(
            {"long_name": f"standard error of {name}"} | ({"units": unit} if unit else {})
        )
    described = {
        "fit_chi2": "weighted sum of squared residuals",
        "fit_redchi2": "reduced chi squared",
        "fit_aic": "Akaike information criterion",
        "fit_bic": "Bayesian information criterion",
        "fit_rsquared": "coefficient of determination",
    }
    data_vars["fit_status"] = take("status").astype(np.int8).assign_attrs(flag_attrs())
    for key, text in described.items():
        data_vars[key] = take(key.removeprefix("fit_")).assign_attrs(long_name=text)
    data_vars["fit_dof"] = take("dof").astype(np.int32).assign_attrs(long_name="degrees of freedom")
    data_vars["fit_npoints"] = (
        take("npoints").astype(np.int32).assign_attrs(long_name="valid points used")
    )
    data_vars["fit_nfev"] = (
        take("nfev").astype(np.int32).assign_attrs(long_name="model evaluations")
    )
    data_vars["fit_at_bound"] = (
        take("at_bound").astype(np.int8).assign_attrs(long_name="free parameters on a bound")
    )
    if layout.covariance:
        cov = take("covariance")
        iter_dims = packed.dims[:-1]
        cov = xr.DataArray(
            cov.data.reshape(cov.shape[:-1] + (len(names), len(names))),
            dims=(*iter_dims, PARAM_DIM, PARAM_J_DIM),
        )
        data_vars["fit_covariance"] = cov
    for key in data_vars:
        data_vars[key] = data_vars[key].drop_vars(
            [c for c in data_vars[key].coords if out_dim in data_vars[key][c].dims or c == out_dim]
        )
    keep = {name: c for name, c in obj.coords.items() if not any(d in c.dims for d in fit_dims)}
    ds = xr.Dataset(data_vars, coords=keep)
    if layout.covariance:
        ds = ds.assign_coords({PARAM_DIM: names, PARAM_J_DIM: names})
    ds.attrs = _attrs(model, unitless, units_ctx, fit_dims, worlds, fitter, engine, obj)
    return ds


def _attrs(model, unitless, units_ctx, fit_dims, worlds, fitter, engine, obj) -> dict:
    tied = [n for n in model.param_names if model.tied[n]]
    attrs = {
        "engine": engine,
        "fitter": type(fitter).__name__,
        "fit_dims": json.dumps([str(d) for d in fit_dims]),
        "model": model_to_json(unitless),
        "model_input_units": json.dumps([unit_string(t) for t in units_ctx.input_units]),
        "model_data_units": unit_string(units_ctx.data_unit) or "",
        "model_has_units": int(units_ctx.rename_data is not None),
        "world_sources": json.dumps([w.source for w in worlds]),
        "time_origins": json.dumps([w.time_origin for w in worlds]),
        "world_coords": json.dumps([None if w.coord is None else str(w.coord) for w in worlds]),
        "param_names": json.dumps(list(unitless.param_names)),
        "tied_params": json.dumps(tied),
    }
    if obj.name is not None:
        attrs["data_name"] = str(obj.name)
    return attrs


def fitted_variables(result: xr.Dataset) -> list[str]:
    """The data variables a Dataset input's result holds fits of (empty for a DataArray's)."""
    return json.loads(result.attrs.get("data_vars_fitted", "[]"))


def prefixes(result: xr.Dataset) -> list[str]:
    """The name prefix of every fit in ``result``: ``["co_", ...]``, or ``[""]``."""
    return [f"{v}_" for v in fitted_variables(result)] or [""]


def counts(ds: xr.Dataset, prefixes: Sequence[str] = ("",)) -> dict[str, int]:
    """Outcome counts of a computed result."""
    statuses = np.concatenate([np.asarray(ds[f"{p}fit_status"].values).ravel() for p in prefixes])
    n = {s: int(np.count_nonzero(statuses == s)) for s in Status}
    return {
        "n_fits": int(statuses.size),
        "n_converged": n[Status.CONVERGED],
        "n_warned": n[Status.CONVERGED_WITH_WARNINGS] + n[Status.MAX_ITERATIONS],
        "n_failed": n[Status.SINGULAR] + n[Status.FAILED],
        "n_skipped": n[Status.SKIPPED_TOO_FEW_POINTS]
        + n[Status.SKIPPED_NO_DATA]
        + n[Status.SKIPPED_MASKED],
    }


def prefixed(ds: xr.Dataset, prefix: str) -> xr.Dataset:
    """Prefix every data variable of a per-variable result."""
    return ds.rename({name: f"{prefix}{name}" for name in ds.data_vars})


def dataset_attrs(parts: Sequence[xr.Dataset], names: Sequence[str]) -> dict:
    """Attrs of a Dataset input's result: each variable's units under ``{var}_``.

    The unprefixed unit attrs stay only when every variable agrees, so that
    nothing reads one variable's units for another.
    """
    attrs = dict(parts[0].attrs)
    attrs["data_vars_fitted"] = json.dumps(list(names))
    attrs.pop("data_name", None)
    for key in UNIT_ATTRS:
        values = [part.attrs[key] for part in parts]
        attrs.update({f"{name}_{key}": value for name, value in zip(names, values, strict=True)})
        if any(value != values[0] for value in values[1:]):
            del attrs[key]
    return attrs


def unit_attrs(result: xr.Dataset, prefix: str = "") -> dict:
    """The unit attrs (:data:`UNIT_ATTRS`) of the fit whose variables start with ``prefix``.

    ``{prefix}model_data_units`` when the result has it (a Dataset input),
    else the unprefixed attr; a key the result lacks is left out.
    """
    out = {}
    for key in UNIT_ATTRS:
        for name in (f"{prefix}{key}", key):
            if name in result.attrs:
                out[key] = result.attrs[name]
                break
    return out
