"""Neighbour-seeded refits: a second look at the fits that went wrong.

After the first pass, a fit is *suspect* if it did not converge, if its reduced
chi2 is an outlier among its neighbours' or the whole map's (more than
``REDCHI2_FACTOR`` times their median), or if a parameter is an outlier among its neighbours' (further
than ``MAD_FACTOR`` robust standard deviations from their median). Suspect fits
are fitted again starting from the median of the neighbouring good fits (a
``window`` wide box over the iterated dims, computed with dask's overlapping
windows); a refit replaces the first answer only if it converged with a chi2 lower
by more than ``CHI2_RTOL`` (or the first fit failed). Passes repeat while they improve something, up
to ``max_passes`` (25; a lazy run does ``LAZY_PASSES``, as it cannot test
for improvement between passes). ``fit_refit_pass`` records in which pass a fit was replaced
(0: never) and ``fit_chi2_drop`` by how much its chi2 fell (NaN where the
first fit had failed and had no chi2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import xarray as xr

from xarray_modelfit.kernel.status import Status

REDCHI2_FACTOR = 3.0
#: passes of a lazy run (``compute=False``), which cannot stop early
LAZY_PASSES = 4
MAD_FACTOR = 5.0


#: a refit replaces a converged fit only if its chi2 is lower by more than this
#: fraction: the same optimum reached again differs in rounding only
CHI2_RTOL = 1e-6


def _nanmedian_last(values: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(values, axis=-1)


def _window_nanmedian(values: np.ndarray, window: int) -> np.ndarray:
    """NaN-ignoring median over a ``window``-wide box around every element (NaN padded)."""
    half = window // 2
    padded = np.pad(values.astype(float), half, constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (window,) * values.ndim)
    flat = windows.reshape(values.shape + (-1,))
    return _nanmedian_last(flat)


def _neighbour_median(da: xr.DataArray, dims: Sequence, window: int) -> xr.DataArray:
    """Median of each fit's neighbourhood, with dask's overlapping blocks when lazy."""
    da = da.transpose(*dims)
    if da.chunks is None:
        return da.copy(data=_window_nanmedian(da.values, window))
    import dask.array

    depth = window // 2
    data = dask.array.map_overlap(
        _window_nanmedian,
        da.data.astype(float),
        depth=depth,
        boundary=np.nan,
        window=window,
        dtype=float,
    )
    return da.copy(data=data)


def suspects(
    result: xr.Dataset, params: Sequence[str], dims: Sequence, window: int
) -> xr.DataArray:
    """Fits worth a second try (lazy boolean map)."""
    status = result["fit_status"]
    converged = status <= int(Status.CONVERGED_WITH_WARNINGS)
    fittable = status < int(Status.SKIPPED_TOO_FEW_POINTS)
    good = converged
    red = result["fit_redchi2"]
    red_med = _neighbour_median(red.where(good), dims, window)
    bad = fittable & ~converged
    bad = bad | (red > REDCHI2_FACTOR * red_med)
    # a region where every fit went wrong has bad neighbours: compare with the whole map too
    map_red = red.where(good).stack(_fits=list(red.dims))
    if map_red.chunks is not None:
        map_red = map_red.chunk(-1)  # one value per fit: small next to the data
    map_median = xr.apply_ufunc(
        _nanmedian_last,
        map_red,
        input_core_dims=[["_fits"]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )
    bad = bad | (red > REDCHI2_FACTOR * map_median)
    for name in params:
        p = result[name].where(good)
        med = _neighbour_median(p, dims, window)
        mad = _neighbour_median(np.abs(p - med), dims, window) * 1.4826
        scale = np.maximum(mad, 1e-6 * np.abs(med))
        bad = bad | (np.abs(result[name] - med) > MAD_FACTOR * scale)
    return bad & fittable


def refit_neighbours(
    first: xr.Dataset,
    fit_again: Callable[[dict, xr.DataArray], xr.Dataset],
    params: Sequence[str],
    dims: Sequence,
    *,
    window: int = 3,
    max_passes: int | None = None,
    eager: bool = True,
) -> xr.Dataset:
    """Refit suspect fits from their neighbours' median until nothing improves.

    ``fit_again(p0, skip)`` runs the same fit with initial values ``p0``
    (a mapping of parameter maps) and every position where ``skip`` is True
    left out.
    """
    if max_passes is None:
        max_passes = 25 if eager else LAZY_PASSES
    result = first
    passes = xr.zeros_like(first["fit_status"], dtype=np.int8)
    drop = xr.zeros_like(first["fit_chi2"])
    names = [n for n in first.data_vars]
    for k in range(1, max_passes + 1):
        bad = suspects(result, params, dims, window)
        if eager:
            bad = bad.compute()
            if not bool(bad.any()):
                break
        good = ~bad & (result["fit_status"] <= int(Status.CONVERGED_WITH_WARNINGS))
        p0 = {}
        for name in params:
            seed = _neighbour_median(result[name].where(good), dims, window)
            p0[name] = seed.fillna(result[name]).fillna(first[name])
        new = fit_again(p0, ~bad)
        better = (
            bad
            & (new["fit_status"] <= int(Status.CONVERGED_WITH_WARNINGS))
            & (
                (new["fit_chi2"] < result["fit_chi2"] * (1 - CHI2_RTOL))
                | (result["fit_status"] > int(Status.CONVERGED_WITH_WARNINGS))
                | result["fit_chi2"].isnull()
            )
        )
        if eager:
            better = better.compute()
        # NaN where the fit being replaced had failed (no chi2 to compare with)
        drop = xr.where(better, drop + (result["fit_chi2"] - new["fit_chi2"]), drop)
        passes = xr.where(better, np.int8(k), passes)
        result = xr.Dataset(
            {
                n: xr.where(better, new[n], result[n])
                .astype(result[n].dtype)
                .assign_attrs(result[n].attrs)
                for n in names
            },
            attrs=result.attrs,
        )
        if eager:
            result = result.compute()
            if not bool(better.any()):
                break
    result["fit_refit_pass"] = passes.astype(np.int8).assign_attrs(
        long_name="refit pass that replaced this fit (0: kept from the first pass)"
    )
    result["fit_chi2_drop"] = drop.assign_attrs(
        long_name="decrease of chi2 by neighbour-seeded refits"
    )
    return result
