"""diagnostics= / diagnostics_path= / diagnostics_callable=: astropy's folder contract."""

from __future__ import annotations

import pytest
from astropy.modeling import fitting, models

from xarray_modelfit import Status, modelfit
from xarray_modelfit.testing import gaussian_cube


class Picky(fitting.TRFLSQFitter):
    """Raises for one spectrum and warns for another."""

    def __call__(self, model, x, y, **kwargs):
        import warnings

        if y[0] == 99.0:
            raise RuntimeError("deliberate failure")
        if y[1] == 42.0:
            warnings.warn("deliberate warning", stacklevel=2)
        return super().__call__(model, x, y, **kwargs)


@pytest.fixture
def data():
    cube, _ = gaussian_cube(ny=3, nx=12, nchan=30, seed=5)
    cube = cube.copy()
    cube[0, 1, 2] = 99.0  # (y=1, x=2) fails
    cube[1, 2, 10] = 42.0  # (y=2, x=10) warns
    return cube


def run(data, tmp_path, mode, **kwargs):
    return modelfit(
        data,
        models.Gaussian1D(2.0, 0.0, 1.2),
        "velocity",
        fitter=Picky(),
        engine="loop",
        scheduler="synchronous",
        diagnostics=mode,
        diagnostics_path=tmp_path,
        **kwargs,
    )


def names(path):
    return sorted(p.name for p in path.iterdir())


def test_error_mode(data, tmp_path):
    res = run(data, tmp_path, "error")
    # zero-padded to the width of the largest iterated dim (12 -> 2 digits)
    assert names(tmp_path) == ["01_02"]
    log = (tmp_path / "01_02" / "error.log").read_text()
    assert "RuntimeError: deliberate failure" in log and "Traceback" in log
    assert res.fit_status[1, 2] == Status.FAILED
    assert res.fit_status[2, 10] == Status.CONVERGED_WITH_WARNINGS


def test_error_warn_mode(data, tmp_path):
    run(data, tmp_path, "error+warn")
    assert names(tmp_path) == ["01_02", "02_10"]
    assert "deliberate warning" in (tmp_path / "02_10" / "warn.log").read_text()
    assert not (tmp_path / "02_10" / "error.log").exists()


def test_all_mode_and_callable(data, tmp_path):
    calls = []

    def callback(path, world, y, weights, model, fitter_kwargs):
        calls.append(path.name)
        (path / "fit.txt").write_text(f"{len(world[0])} {len(y)} {model is None} {fitter_kwargs}")

    run(data, tmp_path, "all", diagnostics_callable=callback, fitter_kwargs={"maxiter": 200})
    assert len(names(tmp_path)) == 36 and sorted(calls) == names(tmp_path)
    assert (tmp_path / "00_00" / "fit.txt").read_text() == "30 30 False {'maxiter': 200}"
    assert (tmp_path / "01_02" / "fit.txt").read_text().split()[2] == "True"


def test_callable_that_raises_is_logged_not_fatal(data, tmp_path):
    def broken(*args):
        raise ValueError("bad callable")

    res = run(data, tmp_path, "error", diagnostics_callable=broken)
    assert "bad callable" in (tmp_path / "01_02" / "callable_error.log").read_text()
    assert int((res.fit_status == Status.CONVERGED).sum()) == 34


def test_no_diagnostics_writes_nothing(data, tmp_path):
    run(data, tmp_path, None)
    assert names(tmp_path) == []
