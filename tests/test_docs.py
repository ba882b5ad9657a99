"""The documentation builds without a warning, and its examples and tables are true.

- every ```python block of a page runs (the blocks of one page share a namespace, in a
  temporary folder); blocks meant to be read only use ```{code-block} python;
- the status-code table is rendered from ``kernel.status`` (see docs/conf.py);
- every row of "Behaviour on bad input" is checked here by running it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
import xarray as xr
from astropy.modeling import custom_model, fitting, models

import xarray_modelfit
from xarray_modelfit import ModelFitError, ModelFitTypeError, modelfit
from xarray_modelfit.kernel.status import STATUS_TABLE, Status
from xarray_modelfit.testing import gaussian_cube

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md"))
RUNNABLE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_docs_build(tmp_path):
    pytest.importorskip("sphinx", reason="sphinx is not installed: pip install -e '.[docs]'")
    for module in ("myst_parser", "numpydoc", "furo"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[docs]'")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + [str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (tmp_path / "html" / "results.html").read_text()
    for status in xarray_modelfit.Status:
        assert f"Status.{status.name}" in html
    for page in PAGES:
        assert (tmp_path / "html" / page.replace(".md", ".html")).exists()


def test_every_page_is_in_the_toctree():
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        if page != "index.md":
            assert f"\n{page[:-3]}\n" in index, f"{page} is not in the toctree"


def test_module_map_names_every_module():
    """docs/internals.md lists every module of the package, and no module that is gone."""
    package = Path(xarray_modelfit.__file__).parent
    modules = {
        p.relative_to(package).as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"
    }
    text = (DOCS / "internals.md").read_text()
    listed = set(re.findall(r"`((?:kernel/)?[a-z_]+\.py)`", text))
    assert modules - listed == set(), f"modules missing from docs/internals.md: {modules - listed}"
    assert listed - modules == set(), (
        f"docs/internals.md names modules that do not exist: {listed - modules}"
    )


@pytest.mark.parametrize("page", [p for p in PAGES if RUNNABLE.search((DOCS / p).read_text())])
def test_examples_run(page, tmp_path, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, block in enumerate(RUNNABLE.findall((DOCS / page).read_text())):
            try:
                exec(compile(block, f"{page}[block {i}]", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{page}, python block {i} failed:\n{block}") from exc
    plt.close("all")


def test_performance_page_keeps_the_placeholder_or_figures():
    text = (DOCS / "performance.md").read_text()
    assert "benchmarks/bench_l1448.py" in text and "benchmarks/bench_scaling.py" in text


# ------------------------------------------------------------ "Behaviour on bad input"

G = models.Gaussian1D(2.0, 0.0, 1.2)


def _data():
    return gaussian_cube(ny=2, nx=3, nchan=20)[0]


def _fit(data=None, model=G, dims="velocity", **kwargs):
    kwargs.setdefault("scheduler", "synchronous")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return modelfit(_data() if data is None else data, model, dims, **kwargs)


def _with(edit):
    data = _data()
    edit(data)
    return data


def _set(index, value):
    def edit(data):
        data[index] = value

    return edit


def _mask(index):
    mask = xr.zeros_like(_data(), dtype=bool)
    mask[index] = True
    return mask


def _weights(index, value):
    weights = xr.ones_like(_data())
    weights[index] = value
    return weights


def _nan_p0():
    p0 = xr.DataArray(np.ones((2, 3)), dims=("y", "x"))
    p0[0, 0] = np.nan
    return {"stddev": p0}


@custom_model
def _Exploding(x, a=1.0):
    if np.any(a > 5):
        raise RuntimeError("the model refuses")
    return a * np.exp(-(x**2))


# phrase in the page's table -> (the case, expected error, message fragment)
ERRORS = {
    "not a DataArray or Dataset": (lambda: _fit(np.ones((3, 4))), ModelFitTypeError, "obj must"),
    "complex or string data": (
        lambda: _fit(_data().astype(complex)),
        ModelFitTypeError,
        "data must be real numbers",
    ),
    "a fitting dim the data does not have": (
        lambda: _fit(dims="frequency"),
        ModelFitError,
        "is not a dim of the data",
    ),
    "as many fitting dims as model inputs": (
        lambda: _fit(dims=("velocity", "x")),
        ModelFitError,
        r"the model has 1 input",
    ),
    "the same dim twice": (
        lambda: _fit(model=models.Gaussian2D(), dims=("velocity", "velocity")),
        ModelFitError,
        "names a dim twice",
    ),
    "a model that is not an astropy model": (
        lambda: _fit(model="gaussian"),
        ModelFitTypeError,
        "model must be an astropy.modeling Model",
    ),
    "a model with two outputs": (
        lambda: _fit(model=models.Mapping((0, 0))),
        ModelFitError,
        "must have one output",
    ),
    "a fitter class instead of an instance": (
        lambda: _fit(fitter=fitting.TRFLSQFitter),
        ModelFitTypeError,
        r"call it: TRFLSQFitter\(\)",
    ),
    '`engine="batched"` with a fitter it does not support': (
        lambda: _fit(engine="batched", fitter=fitting.SLSQPLSQFitter()),
        ModelFitError,
        "engine='batched' cannot fit this",
    ),
    "a coordinate of the wrong length": (
        lambda: _fit(coords={"velocity": np.arange(5)}),
        ModelFitError,
        "has length 5 along 'velocity'",
    ),
    "a coordinate name the data does not have": (
        lambda: _fit(coords={"velocity": "vrad"}),
        ModelFitError,
        "not a coordinate of the data",
    ),
    "a time coordinate that is all NaT": (
        lambda: _fit(
            xr.DataArray(
                np.ones(4), dims="time", coords={"time": np.full(4, np.datetime64("NaT", "ns"))}
            ),
            model=models.Linear1D(),
            dims="time",
        ),
        ModelFitError,
        "holds only NaT",
    ),
    "a `p0` or `bounds` entry for a parameter the model does not have": (
        lambda: _fit(p0={"sigma": 1.0}),
        ModelFitError,
        r"p0 has entries for \['sigma'\]",
    ),
    "bounds with lower > upper": (
        lambda: _fit(bounds={"stddev": (2, 1)}),
        ModelFitError,
        "has lower > upper",
    ),
    "a `p0` DataArray over the fitting dim": (
        lambda: _fit(p0={"mean": xr.DataArray(np.ones(20), dims="velocity")}),
        ModelFitError,
        "unexpected dimensions",
    ),
    "a Quantity in units that do not convert": (
        lambda: _fit(p0={"mean": 3 * u.s}),
        ModelFitError,
        "cannot be converted to the parameter's units",
    ),
    "weights or mask that do not broadcast": (
        lambda: _fit(weights=np.ones(7)),
        ModelFitError,
        "does not broadcast to the data shape",
    ),
    "as a string other than": (
        lambda: _fit(bounds="automatic"),
        ModelFitError,
        "or 'auto', got 'automatic'",
    ),
    "a model set": (
        lambda: _fit(model=models.Gaussian1D([1, 2], [0, 0], [1, 1], n_models=2)),
        ModelFitError,
        "is a set of 2 models",
    ),
    "every parameter is fixed or tied": (
        lambda: _fit(
            model=models.Gaussian1D(
                1, 0, 1, fixed=dict.fromkeys(("amplitude", "mean", "stddev"), True)
            )
        ),
        ModelFitError,
        "there is nothing to fit",
    ),
    "lower == upper for every free parameter": (
        lambda: _fit(bounds={"amplitude": (1, 1), "mean": (0, 0), "stddev": (1, 1)}),
        ModelFitError,
        "bounds pin every free parameter",
    ),
    "a misspelt `fitter_kwargs` key": (
        lambda: _fit(fitter_kwargs={"maxiterations": 5}),
        ModelFitError,
        "which TRFLSQFitter does not take",
    ),
    "whose labels are not the data's": (
        lambda: _fit(
            mask=xr.DataArray(
                np.zeros(20, bool), dims="velocity", coords={"velocity": np.arange(20) + 0.5}
            )
        ),
        ModelFitError,
        "that are not the data's",
    ),  # fmt: skip
    "a unit string astropy cannot parse": (
        lambda: _fit(data_unit="furlongs-ish"),
        ModelFitError,
        "is not a unit",
    ),
    "model units that do not match the data": (
        lambda: _fit(model=models.Gaussian1D(1 * u.m, 0 * u.km / u.s, 1 * u.km / u.s)),
        ModelFitError,
        "parameter units do not match the data units",
    ),
    "coordinate units that do not convert": (
        lambda: _fit(model=models.Gaussian1D(1 * u.K, 0 * u.s, 1 * u.s)),
        ModelFitError,
        "cannot be converted to the model's input units",
    ),
    "an unknown `diagnostics` mode": (
        lambda: _fit(diagnostics="everything"),
        ModelFitError,
        "diagnostics must be None",
    ),
    "`diagnostics` without `diagnostics_path`": (
        lambda: _fit(diagnostics="error"),
        ModelFitError,
        "needs diagnostics_path",
    ),
    "`chunk_n_max` below 1": (
        lambda: _fit(chunk_n_max=0),
        ModelFitError,
        "chunk_n_max must be a positive integer",
    ),
    "an unknown `engine`": (
        lambda: _fit(engine="fast"),
        ModelFitError,
        "engine must be 'auto', 'loop' or 'batched'",
    ),
}

# phrase in the page's table -> (the case, {position: expected status code})
STATUSES = {
    "a position whose data are all NaN": (
        lambda: _fit(_with(_set((slice(None), 0, 0), np.nan))),
        6,
    ),
    "fewer valid points than free parameters": (
        lambda: _fit(_with(_set((slice(2, None), 0, 0), np.nan))),
        5,
    ),
    "every point of a fit masked": (lambda: _fit(mask=_mask((slice(None), 0, 0))), 7),
    "all weights of a fit zero": (lambda: _fit(weights=_weights((slice(None), 0, 0), 0.0)), 6),
    "a NaN point with `skipna=False`": (
        lambda: _fit(_with(_set((3, 0, 0), np.nan)), skipna=False),
        3,
    ),
    "the model raises an exception": (
        lambda: _fit(
            _with(lambda d: d.__setitem__((slice(None), 0, 0), d[:, 0, 0] * 10)), _Exploding()
        ),
        4,
    ),
    "the iteration limit is reached": (lambda: _fit(fitter_kwargs={"maxiter": 2}), 2),
}

# phrase -> a check that returns True
FITTED = {
    "NaN or infinite points (default `skipna=True`)": lambda: (
        lambda r: int(r.fit_status[0, 0]) == 0 and int(r.fit_npoints[0, 0]) == 15
    )(_fit(_with(_set((slice(0, 5), 0, 0), np.inf)))),
    "a NaN weight": lambda: (
        lambda r: int(r.fit_status[0, 0]) == 0 and int(r.fit_npoints[0, 0]) == 19
    )(_fit(weights=_weights((3, 0, 0), np.nan))),
    "a NaN in the coordinate": lambda: (
        lambda r: bool((r.fit_status == 0).all()) and bool((r.fit_npoints == 19).all())
    )(_fit(coords={"velocity": np.where(np.arange(20) == 3, np.nan, _data().velocity)})),
    "a fitting dim without a coordinate": lambda: (
        "pixel index" in _fit(_data().drop_vars("velocity")).attrs["world_sources"]
    ),
    "a coordinate that is not sorted": lambda: np.allclose(
        _fit(_data().isel(velocity=np.random.default_rng(0).permutation(20)))["mean"],
        _fit()["mean"],
    ),
    "the fitting dim split over several dask chunks": lambda: np.allclose(
        _fit(_data().chunk({"velocity": 5}), scheduler="threads")["mean"], _fit()["mean"]
    ),
    "integer data": lambda: bool(
        (_fit((_data() * 100).astype(int), models.Gaussian1D(200, 0, 1.2)).fit_status == 0).all()
    ),
    "an iterated dim of length 0": lambda: (
        _fit(_data().isel(x=slice(0, 0)))["amplitude"].shape == (2, 0)
    ),
}


def _page_rows() -> str:
    return (DOCS / "bad-input.md").read_text()


def _row(phrase: str) -> str:
    rows = [line for line in _page_rows().splitlines() if line.startswith("|") and phrase in line]
    assert len(rows) == 1, f"the table of bad-input.md needs one row with {phrase!r}"
    return rows[0]


@pytest.mark.parametrize("phrase", sorted(ERRORS))
def test_bad_input_errors(phrase):
    case, error, match = ERRORS[phrase]
    assert f"`{error.__name__}`" in _row(phrase)
    with pytest.raises(error, match=match):
        case()


@pytest.mark.parametrize("phrase", sorted(STATUSES))
def test_bad_input_statuses(phrase):
    case, code = STATUSES[phrase]
    assert f"`{STATUS_TABLE[Status(code)][0]}` ({code})" in _row(phrase)
    result = case()
    assert int(result.fit_status[0, 0]) == code
    others = result.fit_status.values.ravel()[1:]
    assert (others == (2 if code == 2 else 0)).all()
    if code >= int(xarray_modelfit.Status.SINGULAR):
        name = json.loads(result.attrs["param_names"])[0]
        assert np.isnan(float(result[name][0, 0]))


def test_nan_initial_value_fails_that_fit():
    row = _row("a NaN initial value")
    assert "`singular_or_nonfinite` (3)" in row and "`failed` (4)" in row
    for engine in ("batched", "loop"):
        result = _fit(p0=_nan_p0(), engine=engine)
        assert int(result.fit_status[0, 0]) in (3, 4)
        assert (result.fit_status.values.ravel()[1:] == 0).all()


@pytest.mark.parametrize("phrase", sorted(FITTED))
def test_bad_input_fitted(phrase):
    assert "fitted" in _row(phrase).lower() or "no error" in _row(phrase).lower()
    assert FITTED[phrase]()


def test_every_row_is_checked():
    page = _page_rows().split("## The adversarial table")[0]  # that table: test_adversarial.py
    rows = [line for line in page.splitlines() if line.startswith("|")]
    body = [r for r in rows if "---" not in r and not r.startswith("| input")]
    checked = [*ERRORS, *STATUSES, *FITTED, "a NaN initial value"]
    unchecked = [r for r in body if not any(p in r for p in checked)]
    assert body and not unchecked, f"rows without a test: {unchecked}"
