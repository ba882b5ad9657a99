"""summary() and failures(): the counts are the result's, positions are labels."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.modeling import models

from xarray_modelfit import ModelFitError, Status, modelfit
from xarray_modelfit.testing import gaussian_cube

MODEL = models.Gaussian1D(2.0, 0.0, 1.5)


@pytest.fixture(scope="module")
def labelled():
    """Labelled (y, x); one spectrum with a big outlier, one all NaN."""
    cube, _ = gaussian_cube(ny=3, nx=4, nchan=41, seed=4)
    cube = cube.assign_coords(y=[100, 200, 300], x=[-1.5, -0.5, 0.5, 1.5]).copy()
    cube[10:13, 1, 2] += 8.0  # worst fit: y=200, x=0.5
    cube[:, 2, 3] = np.nan  # skipped: y=300, x=1.5
    return cube


def test_summary_counts_and_worst_fit_by_label(labelled):
    res = modelfit(labelled, MODEL, "velocity", scheduler="synchronous")
    text = res.modelfit.summary(n_worst=2)
    assert "fits: 12 fits" in text
    assert re.search(r"converged\s+11\b", text) and re.search(r"skipped_no_data\s+1\b", text)
    worst = re.search(r"worst fits by reduced chi2:\n\s+y=(\S+), x=(\S+): redchi2=(\S+)", text)
    assert worst, text
    y, x, red = int(worst[1]), float(worst[2].rstrip(":")), float(worst[3])
    assert (y, x) == (200, 0.5)
    assert red == pytest.approx(float(res.fit_redchi2.sel(y=y, x=x)), rel=1e-3)
    assert red == pytest.approx(float(res.fit_redchi2.max()), rel=1e-3)


def test_failures_by_label_and_empty_table_keeps_columns(labelled):
    res = modelfit(labelled, MODEL, "velocity", scheduler="synchronous")
    table = res.modelfit.failures()
    assert table[["y", "x", "status"]].values.tolist() == [[300, 1.5, int(Status.SKIPPED_NO_DATA)]]
    clean = modelfit(labelled.isel(y=[0]), MODEL, "velocity", scheduler="synchronous")
    empty = clean.modelfit.failures()
    assert len(empty) == 0 and list(empty.columns) == ["variable", "y", "x", "status", "meaning"]
    assert empty.status.tolist() == []


def test_prefix_selects_one_variable_of_a_dataset(labelled):
    ds = xr.Dataset({"a": labelled, "b": labelled * 2})
    res = modelfit(ds, MODEL, "velocity", scheduler="synchronous")
    both = res.modelfit.summary()
    assert "a_: 12 fits" in both and "b_: 12 fits" in both
    only_b = res.modelfit.summary(prefix="b_")
    assert "b_: 12 fits" in only_b and "a_:" not in only_b
    assert res.modelfit.failures(prefix="b_").variable.tolist() == ["b"]
    assert res.modelfit.failures().variable.tolist() == ["a", "b"]
    with pytest.raises(ModelFitError, match=r"prefix='c_' is not one of this result's"):
        res.modelfit.summary(prefix="c_")


def test_failures_of_variables_with_different_iterated_dims():
    """Each variable's failures at its own position; labels keep their dtype."""
    v = np.linspace(-5, 5, 21)
    line = np.exp(-0.5 * v**2)
    a = line * np.ones((3, 1))
    a[1] = np.nan  # y=20
    b = line * np.ones((2, 1))
    b[0] = np.nan  # t=2001-01-01
    c = line * np.ones((2, 1))
    c[1] = np.nan  # s="q"
    time = np.array(["2001-01-01", "2002-01-01"], dtype="datetime64[ns]")
    ds = xr.Dataset(
        {"a": (("y", "v"), a), "b": (("t", "v"), b), "c": (("s", "v"), c)},
        coords={"v": v, "y": [10, 20, 30], "t": time, "s": ["p", "q"]},
    )
    res = modelfit(ds, models.Gaussian1D(1, 0, 1), "v", scheduler="synchronous")
    table = res.modelfit.failures()
    assert list(table.columns) == ["variable", "y", "t", "s", "status", "meaning"]
    assert table.variable.tolist() == ["a", "b", "c"]
    assert table.status.tolist() == [int(Status.SKIPPED_NO_DATA)] * 3
    assert table.y.tolist()[0] == 20 and table.y.isna().tolist() == [False, True, True]
    assert table.y.dtype.kind == "i"  # 20, not 20.0
    assert table.t.tolist()[1] == pd.Timestamp("2001-01-01") and table.t.dtype.kind == "M"
    assert table.t.isna().tolist() == [True, False, True]
    assert table.s.tolist()[2] == "q" and table.s.isna().tolist() == [True, True, False]
    only_b = res.modelfit.failures(prefix="b_")
    assert list(only_b.columns) == ["variable", "t", "status", "meaning"]
    assert only_b.t.dtype == np.dtype("datetime64[ns]") and not only_b.t.isna().any()
    # nothing failed: the same columns, the same label dtypes
    empty = res.isel(y=[0], t=[1], s=[0]).modelfit.failures()
    assert len(empty) == 0 and list(empty.columns) == list(table.columns)
    assert empty.y.dtype == np.int64 and empty.t.dtype == np.dtype("datetime64[ns]")
