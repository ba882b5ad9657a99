"""Figures of results: parameter maps, and one spectrum with its fit."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr


def _pyplot():
    try:
        import matplotlib

        if matplotlib.get_backend().lower() not in ("agg",) and not _has_display():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        raise ImportError("plotting needs matplotlib: pip install matplotlib") from None
    return plt


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY")) or "ipykernel" in __import__("sys").modules


def plot_maps(result: xr.DataArray | xr.Dataset, params=None, *, prefix: str = "", ncols: int = 3, robust: bool = True):
    """One panel per parameter, units in the colour-bar labels, robust colour limits."""
    plt = _pyplot()
    names = params or json.loads(result.attrs["param_names"])
    names = [f"{prefix}{n}" for n in names]
    ncols = min(ncols, len(names))
    nrows = int(np.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        da = result[name]
        if da.ndim == 1:
            da.plot(ax=ax)
        else:
            label = name + (f" [{da.attrs['units']}]" if da.attrs.get("units") else "")
            da.plot(ax=ax, robust=robust, cbar_kwargs={"label": label})
        ax.set_title(name)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_fit(data: xr.DataArray, result: xr.Dataset, *, prefix: str = "", ax=None, **position):
    """Data, fitted model and residuals at one position (``**position`` selects it)."""
    plt = _pyplot()
    spectrum = data.sel(**position) if position else data
    model = result.modelfit.evaluate(data, prefix=prefix)
    model = model.sel(**position) if position else model
    fit_dims = json.loads(result.attrs["fit_dims"])
    if len(fit_dims) != 1:
        raise ValueError("plot_fit draws 1-d fits; select a plane and plot it with xarray for 2-d models")
    if ax is None:
        fig, (ax, rax) = plt.subplots(2, 1, sharex=True, figsize=(6, 5), gridspec_kw={"height_ratios": [3, 1]})
    else:
        fig, rax = ax.figure, None
    spectrum.plot.step(ax=ax, where="mid", color="k", label="data")
    model.plot(ax=ax, color="C1", label="fit")
    ax.legend()
    ax.set_xlabel("")
    if rax is not None:
        (spectrum - model).plot.step(ax=rax, where="mid", color="C2")
        rax.axhline(0, color="0.5", lw=0.8)
        rax.set_title("")
        rax.set_ylabel("residual")
    return fig
