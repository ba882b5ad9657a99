"""Figures of results: parameter maps, and one spectrum with its fit.

Both functions need matplotlib (``pip install matplotlib``) and return the
:class:`matplotlib.figure.Figure`, so a script can ``fig.savefig(...)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import xarray as xr

from xarray_modelfit.results import fitted_variables, prefixes

__all__ = ["plot_fit", "plot_maps"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def _check_result(result) -> None:
    if not isinstance(result, xr.Dataset) or "param_names" not in result.attrs:
        raise TypeError(
            "expected a modelfit result (the Dataset returned by modelfit), "
            f"got {type(result).__name__}"
        )


def _default_prefix(result: xr.Dataset, prefix: str | None) -> str:
    """The prefix of the first fitted variable of a Dataset fit, else ``""``."""
    return prefixes(result)[0] if prefix is None else prefix


def _resolve(result: xr.Dataset, names: Sequence[str], prefix: str | None) -> list[str]:
    """The result's variable for each name: ``{prefix}{name}``, or the name itself.

    With ``prefix=`` given, bare parameter names get it first; without, a full
    variable name (``"pr_slope"``) is taken as is and a bare one gets the first
    fitted variable's prefix.
    """
    default = _default_prefix(result, prefix)
    out, missing = [], []
    for name in names:
        tries = [f"{prefix}{name}", name] if prefix is not None else [name, f"{default}{name}"]
        found = next((t for t in tries if t in result.data_vars), None)
        (out if found is not None else missing).append(found or f"{default}{name}")
    if missing:
        raise KeyError(f"the result has no variables {missing}; it has {list(result.data_vars)}")
    return out


def _split(result: xr.Dataset, full: str) -> tuple[str | None, str]:
    """``(variable, name)`` of a result variable: ``"pr_slope"`` -> ``("pr", "slope")``."""
    owners = [v for v in fitted_variables(result) if full.startswith(f"{v}_")]
    if not owners:
        return None, full
    var = max(owners, key=len)
    return var, full[len(var) + 1 :]


def _label(da: xr.DataArray, name: str) -> str:
    unit = da.attrs.get("units")
    return f"{name} [{unit}]" if unit else name


def plot_maps(
    result: xr.Dataset,
    params: Sequence[str] | None = None,
    *,
    prefix: str | None = None,
    ncols: int = 3,
    robust: bool = True,
    **kwargs,
):
    """One panel per fitted parameter: a map over the iterated dims.

    Parameters
    ----------
    result : Dataset
        A modelfit result.
    params : sequence of str, optional
        Variables to draw; the model's parameters by default. Any variable of
        the result works (``"mean_stderr"``, ``"fit_redchi2"``, ...). For the
        result of a Dataset fit, full names mix variables
        (``["pr_slope", "tas_slope"]``); bare names get ``prefix``.
    prefix : str, optional
        For the result of a Dataset fit, the ``"{var}_"`` prefix of the
        variable to draw (default: the first fitted variable).
    ncols : int
        Panels per row.
    robust : bool
        Colour limits from the 2nd and 98th percentiles (outliers do not wash
        out the map).
    **kwargs
        Passed to :meth:`xarray.DataArray.plot` (``cmap``, ``x``, ``y``...).

    Returns
    -------
    matplotlib.figure.Figure
        One axes per parameter (plus their colour bars), titled by the parameter
        name (``"{var}: {name}"`` for a Dataset fit); colour-bar labels carry
        the units. Maps over one iterated dim are
        drawn as lines, over none as the value with its standard error.
    """
    _check_result(result)
    plt = _pyplot()
    names = list(params) if params is not None else json.loads(result.attrs["param_names"])
    if not names:
        raise ValueError("params is empty: nothing to plot")
    full_names = _resolve(result, names, prefix)
    for full in full_names:
        if result[full].ndim > 2:
            raise ValueError(
                f"{full} has {result[full].ndim} dims {list(result[full].dims)}; select a 2-d "
                "slice first (result.isel(...)) or plot it with xarray"
            )
    ncols = max(1, min(ncols, len(full_names)))
    nrows = int(np.ceil(len(full_names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    shown: list[str] = []
    for ax, full in zip(axes.ravel(), full_names, strict=False):
        da = result[full]
        var, name = _split(result, full)
        if var is not None and var not in shown:
            shown.append(var)
        label = _label(da, name)
        if da.ndim == 2:
            da.plot(ax=ax, robust=robust, cbar_kwargs={"label": label}, **kwargs)
        elif da.ndim == 1:
            da.plot(ax=ax, **kwargs)
            ax.set_ylabel(label)
        else:
            err = result.get(f"{full}_stderr")
            text = f"{float(da):.6g}"
            if err is not None:
                text += f" ± {float(err):.2g}"
            ax.text(0.5, 0.5, f"{text} {da.attrs.get('units', '')}", ha="center", va="center")
            ax.set_axis_off()
        ax.set_title(name if var is None else f"{var}: {name}")
    for ax in axes.ravel()[len(full_names) :]:
        ax.remove()
    data_name = result.attrs.get("data_name") or ", ".join(shown)
    if data_name:
        fig.suptitle(f"{data_name}: fitted along {', '.join(json.loads(result.attrs['fit_dims']))}")
    fig.tight_layout()
    return fig


def _additive_components(model) -> list | None:
    """The leaf models of a compound model built with ``+`` only, else None."""
    from astropy.modeling.core import CompoundModel

    if not isinstance(model, CompoundModel):
        return None

    def additive(m) -> bool:
        if not isinstance(m, CompoundModel):
            return True
        return m.op == "+" and additive(m.left) and additive(m.right)

    if not additive(model):
        return None
    return [model[i] for i in range(model.n_submodels)]


def _component_results(point: xr.Dataset, prefix: str) -> list[tuple[str, xr.Dataset]]:
    """One pseudo-result per component of an additive compound model.

    A component's parameters are the compound's ``{name}_{i}`` values; the
    result attrs (units, time origin, fitted dims) stay those of the fit, so
    :func:`~xarray_modelfit.evaluate` puts the component on the same grid.
    """
    from xarray_modelfit.serialize import model_from_json, model_to_json

    components = _additive_components(model_from_json(point.attrs["model"]))
    if not components:
        return []
    out = []
    for i, leaf in enumerate(components):
        names = list(leaf.param_names)
        variables = {n: point[f"{prefix}{n}_{i}"] for n in names}
        attrs = dict(point.attrs)
        attrs.update(model=model_to_json(leaf), param_names=json.dumps(names))
        label = leaf.name or f"{type(leaf).__name__} [{i}]"
        out.append((label, xr.Dataset(variables, attrs=attrs)))
    return out


def _format(value) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.6g}"
    return str(value)


def plot_fit(
    data: xr.DataArray,
    result: xr.Dataset,
    *,
    prefix: str | None = None,
    components: bool = True,
    residuals: bool = True,
    ax=None,
    **position,
):
    """Data, fitted model, its components and the residuals at one position.

    Parameters
    ----------
    data : DataArray
        The data that was fitted (or any DataArray on the same iterated dims;
        its fitting-dim coordinates are the x axis). For a Dataset fit, one
        variable of it (``ds["tas"]``).
    result : Dataset
        The modelfit result.
    prefix : str, optional
        For a Dataset fit, the ``"{var}_"`` prefix (default: the data's name
        when it is a fitted variable, else the first fitted variable).
    components : bool
        Also draw each component of a compound model built with ``+``
        (evaluated with its fitted parameters).
    residuals : bool
        Draw data minus model in a panel below (only when ``ax`` is None).
    ax : matplotlib Axes, optional
        Draw the data and the fit into this axes (no residual panel).
    **position
        Selects one fit: ``x=50, y=40`` (labels with ``sel``; dims without a
        coordinate index by position). Every iterated dim must be selected.

    Returns
    -------
    matplotlib.figure.Figure
        The data as steps (``label="data"``), the model on the data's grid
        (``label="fit"``), components (dashed) and the residual panel.
    """
    _check_result(result)
    plt = _pyplot()
    from xarray_modelfit.errors import ModelFitTypeError
    from xarray_modelfit.evaluate import as_candidate, evaluate, is_selection
    from xarray_modelfit.kernel.status import STATUS_TABLE, Status

    if isinstance(data, xr.Dataset):
        fitted = fitted_variables(result) or [str(v) for v in data.data_vars][:1] or ["var"]
        raise ModelFitTypeError(
            f"plot_fit draws one variable, but data is a Dataset (variables "
            f"{list(map(str, data.data_vars))}); pass one variable with its prefix, e.g. "
            f"plot_fit(data[{fitted[0]!r}], result, prefix={fitted[0] + '_'!r}, ...)"
        )
    if prefix is None and data.name is not None and str(data.name) in fitted_variables(result):
        prefix = f"{data.name}_"  # the data's own variable of a Dataset fit
    prefix = _default_prefix(result, prefix)
    fit_dims = json.loads(result.attrs["fit_dims"])
    if len(fit_dims) != 1:
        raise ValueError(
            "plot_fit draws 1-d fits; for a 2-d model plot result.modelfit.evaluate(data) "
            "and the data with xarray"
        )
    unknown = [d for d in position if d not in data.dims]
    if unknown:
        raise ValueError(f"position names {unknown}, which are not dims of the data {data.dims}")
    spectrum = data.sel(**position) if position else data
    if spectrum.dims != tuple(fit_dims):
        rest = [d for d in spectrum.dims if d not in fit_dims]
        raise ValueError(f"select one fit: give a value for every iterated dim; still free: {rest}")
    keep = {d: v for d, v in position.items() if d in result.dims}
    point = result.sel(**keep) if keep else result
    if is_selection(point) and int(point["fit_model_index"]) >= 0:  # the chosen candidate's fit
        point = as_candidate(point, int(point["fit_model_index"]))
    model = evaluate(point, spectrum, prefix=prefix).compute()
    spectrum = spectrum.compute()

    rax = None
    if ax is None:
        if residuals:
            fig, (ax, rax) = plt.subplots(
                2, 1, sharex=True, figsize=(7, 5.2), gridspec_kw={"height_ratios": [3, 1]}
            )
        else:
            fig, ax = plt.subplots(figsize=(7, 4))
    else:
        fig = ax.figure
    x = spectrum[fit_dims[0]] if fit_dims[0] in spectrum.coords else None
    xs = np.asarray(x.values) if x is not None else np.arange(spectrum.size)
    ax.step(xs, spectrum.values, where="mid", color="k", lw=1, label="data")
    ax.plot(xs, model.values, color="C1", lw=1.8, label="fit")
    if components:
        for i, (label, comp) in enumerate(_component_results(point, prefix)):
            values = evaluate(comp, spectrum).values
            ax.plot(xs, values, ls="--", lw=1, color=f"C{i + 2}", label=label)
    ax.legend(fontsize="small")
    ylabel = _label(spectrum, str(spectrum.name) if spectrum.name is not None else "data")
    ax.set_ylabel(ylabel)
    xlabel = _label(x, str(fit_dims[0])) if x is not None else f"{fit_dims[0]} (pixel)"
    status_var = point.get(f"{prefix}fit_status")
    title = ", ".join(f"{d}={_format(v)}" for d, v in position.items())
    if status_var is not None and status_var.ndim == 0:
        title += ("; " if title else "") + STATUS_TABLE[Status(int(status_var))][0]
        red = point.get(f"{prefix}fit_redchi2")
        if red is not None and np.isfinite(float(red)):
            title += f", reduced chi2 {float(red):.3g}"
    ax.set_title(title)
    if rax is not None:
        rax.step(xs, (spectrum - model).values, where="mid", color="C0", lw=1)
        rax.axhline(0, color="0.5", lw=0.8)
        rax.set_ylabel("residual")
        rax.set_xlabel(xlabel)
        fig.tight_layout()
    else:
        ax.set_xlabel(xlabel)
    return fig
