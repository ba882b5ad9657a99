"""Human-readable reports of a result: summary and the list of failures."""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from xarray_modelfit.kernel.status import FIRST_FAILURE, STATUS_TABLE, Status


def _prefixes(result: xr.Dataset) -> list[str]:
    from xarray_modelfit.results import prefixes

    return prefixes(result)


def _check_prefix(result: xr.Dataset, prefix: str | None) -> list[str]:
    prefixes = _prefixes(result)
    if prefix is None:
        return prefixes
    if prefix not in prefixes:
        from xarray_modelfit.errors import ModelFitError

        raise ModelFitError(f"prefix={prefix!r} is not one of this result's: {prefixes}")
    return [prefix]


def _label(da: xr.DataArray, idx: tuple[int, ...]) -> str:
    """``dim=label`` of one position (the index where a dim has no coordinate)."""
    parts = []
    for d, i in zip(da.dims, idx, strict=True):
        label = da[d].values[i] if d in da.coords else i
        parts.append(f"{d}={label.item() if hasattr(label, 'item') else label}")
    return ", ".join(parts)


def summary(result: xr.Dataset, n_worst: int = 5, prefix: str | None = None) -> str:
    """Counts per status, parameter ranges and the worst fits by reduced chi2.

    Positions are given by label, as ``plot_fit(**position)`` takes them;
    ``prefix`` restricts the report to one variable of a Dataset's result.
    """
    lines = [
        f"modelfit result: engine={result.attrs.get('engine')}, fitter={result.attrs.get('fitter')}"
    ]
    names = json.loads(result.attrs["param_names"])
    for pre in _check_prefix(result, prefix):
        status = np.asarray(result[f"{pre}fit_status"].values)
        lines.append(f"{pre or 'fits'}: {status.size} fits")
        for s in Status:
            n = int(np.count_nonzero(status == s))
            if n:
                lines.append(f"  {STATUS_TABLE[s][0]:<26} {n:>9}  ({100 * n / status.size:.2f}%)")
        for name in names:
            v = np.asarray(result[f"{pre}{name}"].values, dtype=float)
            unit = result[f"{pre}{name}"].attrs.get("units", "")
            if np.isfinite(v).any():
                lo, med, hi = np.nanpercentile(v, [1, 50, 99])
                lines.append(f"  {name:<20} p1={lo:.6g} median={med:.6g} p99={hi:.6g} {unit}")
        red = result[f"{pre}fit_redchi2"]
        values = np.asarray(red.values, dtype=float)
        if np.isfinite(values).any() and n_worst > 0:
            order = np.argsort(np.where(np.isfinite(values), values, -np.inf), axis=None)[::-1][
                :n_worst
            ]
            lines.append("  worst fits by reduced chi2:")
            for flat in order:
                idx = np.unravel_index(flat, values.shape)
                lines.append(f"    {_label(red, idx)}: redchi2={values[idx]:.4g}")
    return "\n".join(lines)


def failures(result: xr.Dataset, prefix: str | None = None):
    """A table (pandas DataFrame) of the fits that failed or were skipped.

    One row per fit, with its position by label, ``status`` and ``meaning``;
    the columns are there even when nothing failed. For a Dataset's result
    whose variables have different iterated dims, the position columns are
    the union of them (in order of appearance), empty (NaN, NaT, <NA> or None)
    where a variable lacks that dim; labels keep their dtype.
    """
    import pandas as pd

    prefixes = _check_prefix(result, prefix)
    dims: list = []
    for pre in prefixes:
        dims += [d for d in result[f"{pre}fit_status"].dims if d not in dims]
    rows = []
    for pre in prefixes:
        status = result[f"{pre}fit_status"]
        bad = status >= int(FIRST_FAILURE)
        if not bool(bad.any()):
            continue
        stacked = status.where(bad).to_series().dropna()
        for index, code in stacked.items():
            index = index if isinstance(index, tuple) else (index,)
            row = {"variable": pre.rstrip("_") or None}
            row.update(dict(zip(status.dims, index, strict=True)))
            row.update(status=int(code), meaning=STATUS_TABLE[Status(int(code))][0])
            rows.append(row)
    columns = {"variable": _text_column([r["variable"] for r in rows])}
    for d in dims:
        dtype = result[d].dtype if d in result.coords else np.dtype(np.int64)
        columns[d] = _label_column([r.get(d) for r in rows], dtype)
    columns["status"] = pd.Series([r["status"] for r in rows], dtype=np.int64)
    columns["meaning"] = _text_column([r["meaning"] for r in rows])
    return pd.DataFrame(columns)


def _label_column(values: list, dtype: np.dtype):
    """Labels of one dim as a column of their own dtype; None where a row lacks the dim.

    Integers and booleans with gaps become pandas' nullable ``Int64``/``boolean``
    (a float column would turn labels 10, 20 into 10.0, 20.0).
    """
    import pandas as pd

    if any(v is None for v in values) and dtype.kind in "iub":
        nullable = "boolean" if dtype.kind == "b" else dtype.name.capitalize().replace("Ui", "UI")
        return pd.Series(pd.array(values, dtype=nullable))
    if dtype.kind in "iufbMm":
        return pd.Series(values, dtype=dtype)
    return _text_column(values)


def _text_column(values: list):
    """Strings (or other objects) as pandas infers them; ``object`` when there are none."""
    import pandas as pd

    return pd.Series(values, dtype=None if values else object)
