"""The adversarial table: every row a test, under both engines.

Each row ends in a clear error before fitting or in a per-fit status, never in
a crash that loses other fits. The outcomes are listed in docs/bad-input.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from astropy.modeling import custom_model, fitting, models

from xarray_modelfit import ModelFitError, Status, modelfit

ENGINES = ["loop", "batched"]
V = np.linspace(-5, 5, 30)
GOOD = 2 * np.exp(-0.5 * ((V - 0.5) / 1.1) ** 2) + np.random.default_rng(0).normal(0, 0.01, 30)
MODEL = models.Gaussian1D(1.5, 0.0, 1.0)


def fit(spectra, engine, coords=V, model=MODEL, good=GOOD, **kwargs):
    """Fit the rows of ``spectra`` plus one good spectrum, which must never be disturbed."""
    spectra = np.atleast_2d(np.asarray(spectra))
    data = np.vstack([spectra.astype(float), good[None, :]]).astype(spectra.dtype)
    da = xr.DataArray(data, dims=("p", "v"), coords={"v": coords})
    res = modelfit(
        da, model, "v", engine=engine, scheduler="synchronous", preflight=False, **kwargs
    )
    good_fit = res.isel(p=-1)
    assert int(good_fit.fit_status) == Status.CONVERGED
    if not kwargs and model is MODEL:  # unconstrained: the good neighbour equals astropy's fit
        ref = fitting.TRFLSQFitter()(MODEL.copy(), np.asarray(coords), good)
        np.testing.assert_allclose(float(good_fit["mean"]), ref.mean.value, rtol=1e-4, atol=1e-6)
    return res.isel(p=0)


def status(res) -> Status:
    return Status(int(res.fit_status))


@pytest.mark.parametrize("engine", ENGINES)
class TestTable:
    def test_all_nan(self, engine):
        assert status(fit(np.full(30, np.nan), engine)) == Status.SKIPPED_NO_DATA

    def test_all_zero(self, engine):
        res = fit(np.zeros(30), engine)
        # the best fit is a zero-amplitude line whose position and width are undetermined
        assert status(res) in (Status.CONVERGED, Status.SINGULAR)
        if status(res) == Status.CONVERGED:
            assert abs(float(res.amplitude)) < 1e-6

    def test_constant(self, engine):
        res = fit(np.full(30, 3.0), engine)
        assert status(res) in (Status.CONVERGED, Status.MAX_ITERATIONS, Status.SINGULAR)
        if status(res) != Status.SINGULAR:
            assert float(res.fit_chi2) < 0.5  # a very wide Gaussian fits the constant

    def test_infinities_are_left_out(self, engine):
        spec = GOOD.copy()
        spec[3], spec[5] = np.inf, -np.inf
        res = fit(spec, engine)
        assert status(res) == Status.CONVERGED and int(res.fit_npoints) == 28

    @pytest.mark.parametrize("dtype", ["int16", "uint8", "float16", "float32", "float64"])
    def test_dtypes_fit_as_float64(self, engine, dtype):
        scale = 50 if np.dtype(dtype).kind in "iu" else 1
        spec = np.round(GOOD * scale) if scale > 1 else GOOD
        res = fit((spec * 1).astype(dtype), engine, model=models.Gaussian1D(1.5 * scale, 0, 1))
        assert status(res) == Status.CONVERGED
        np.testing.assert_allclose(float(res["mean"]), 0.5, atol=0.05)

    @pytest.mark.parametrize("scale", [1e30, 1e-30])
    def test_extreme_magnitudes_with_a_start_on_their_scale(self, engine, scale):
        p0 = {"amplitude": xr.DataArray([1.5 * scale, 1.5], dims="p")}
        res = fit(GOOD * scale, engine, p0=p0)
        if scale > 1:  # beyond 1e16 the convergence tests are unreliable: always flagged
            assert status(res) == Status.CONVERGED_WITH_WARNINGS
            return
        if status(res) == Status.CONVERGED_WITH_WARNINGS:
            # the fitter's convergence tests passed at the start (scipy's absolute gtol on
            # ~1e-30 data, astropy's relative tests on ~1e30): flagged, parameters unchanged
            np.testing.assert_allclose(float(res.amplitude), 1.5 * scale)
            return
        assert status(res) == Status.CONVERGED
        np.testing.assert_allclose(float(res["mean"]), 0.5, atol=0.02)
        np.testing.assert_allclose(float(res.amplitude) / scale, 2, rtol=0.01)

    def test_descending_coordinate(self, engine):
        res = fit(GOOD[::-1], engine, coords=V[::-1], good=GOOD[::-1])
        np.testing.assert_allclose(float(res["mean"]), 0.5, atol=0.02)

    def test_non_uniform_coordinate(self, engine):
        v = np.sort(np.random.default_rng(1).uniform(-5, 5, 30))
        spec = 2 * np.exp(-0.5 * ((v - 0.5) / 1.1) ** 2)
        da = xr.DataArray(spec[None], dims=("p", "v"), coords={"v": v})
        res = modelfit(da, MODEL, "v", engine=engine, scheduler="synchronous").isel(p=0)
        np.testing.assert_allclose([float(res["mean"]), float(res.stddev)], [0.5, 1.1], atol=1e-6)

    def test_duplicate_coordinate_values(self, engine):
        v = V.copy()
        v[10] = v[11]
        res = fit(GOOD, engine, coords=v)
        ref = fitting.TRFLSQFitter()(MODEL.copy(), v, GOOD)
        assert status(res) == Status.CONVERGED
        np.testing.assert_allclose(float(res["mean"]), ref.mean.value, rtol=1e-4)

    def test_axis_shorter_than_the_parameters(self, engine):
        da = xr.DataArray(np.ones((2, 2)), dims=("p", "v"), coords={"v": [0.0, 1.0]})
        res = modelfit(da, MODEL, "v", engine=engine, scheduler="synchronous")
        assert (res.fit_status == Status.SKIPPED_TOO_FEW_POINTS).all()
        one = modelfit(da.isel(v=[0]), MODEL, "v", engine=engine, scheduler="synchronous")
        assert (one.fit_status == Status.SKIPPED_TOO_FEW_POINTS).all()

    def test_zero_size_iterated_dim(self, engine):
        da = xr.DataArray(np.ones((0, 30)), dims=("p", "v"), coords={"v": V})
        res = modelfit(da, MODEL, "v", engine=engine, scheduler="synchronous")
        assert res.amplitude.shape == (0,) and res.attrs["n_fits"] == 0

    def test_single_spectrum_gives_a_0d_result(self, engine):
        da = xr.DataArray(GOOD, dims="v", coords={"v": V})
        res = modelfit(da, MODEL, "v", engine=engine, scheduler="synchronous")
        assert res.amplitude.shape == () and int(res.fit_status) == Status.CONVERGED

    def test_start_outside_the_bounds(self, engine):
        res = fit(GOOD, engine, bounds={"stddev": (2, 3)})
        assert status(res) == Status.CONVERGED and float(res.stddev) == pytest.approx(2, abs=1e-6)

    def test_equal_bounds_pin_the_parameter(self, engine):
        res = fit(GOOD, engine, bounds={"stddev": (1.1, 1.1)})
        assert status(res) == Status.CONVERGED and float(res.stddev) == 1.1

    def test_nan_initial_value(self, engine):
        p0 = xr.DataArray([np.nan, 0.0], dims="p")
        assert status(fit(GOOD, engine, p0={"mean": p0})) == Status.FAILED

    def test_all_weights_zero(self, engine):
        w = np.vstack([np.zeros(30), np.ones(30)])
        assert status(fit(GOOD, engine, weights=w)) == Status.SKIPPED_NO_DATA

    def test_negative_weights_act_as_their_size(self, engine):
        """astropy multiplies residuals by the weights, so the sign drops out of chi2."""
        pos = fit(GOOD, engine, weights=np.full((2, 30), 2.0))
        neg = fit(GOOD, engine, weights=np.full((2, 30), -2.0))
        np.testing.assert_allclose(float(neg["mean"]), float(pos["mean"]), rtol=1e-10)

    def test_mask_all_true(self, engine):
        mask = np.vstack([np.ones(30, bool), np.zeros(30, bool)])
        assert status(fit(GOOD, engine, mask=mask)) == Status.SKIPPED_MASKED

    def test_model_raising_for_some_parameters(self, engine):
        """The loop engine fails that fit; the batched engine's probe refuses the model up front."""

        @custom_model
        def Picky(x, amplitude=1.0, mean=0.0, stddev=1.0):
            if np.any(np.asarray(amplitude) > 100):
                raise ValueError("amplitude too large")
            return amplitude * np.exp(-0.5 * ((x - mean) / stddev) ** 2)

        picky = Picky(150.0, 0.0, 1.0)
        if engine == "batched":
            with pytest.raises(ModelFitError, match="engine='batched' cannot fit this"):
                fit(GOOD * 1000, engine, model=picky)
            engine = "auto"  # falls back to the loop engine
        p0 = {"amplitude": xr.DataArray([150.0, 1.5], dims="p")}
        res = fit(GOOD * 1000, engine, model=picky, p0=p0)
        assert status(res) == Status.FAILED

    def test_callable_that_raises(self, engine, tmp_path):
        def broken(*args):
            raise RuntimeError("callable broke")

        res = fit(
            np.zeros(30) * np.nan,
            engine,
            diagnostics="all",
            diagnostics_path=tmp_path,
            diagnostics_callable=broken,
        )
        assert status(res) == Status.SKIPPED_NO_DATA
        logs = list(tmp_path.rglob("callable_error.log"))
        assert logs and "callable broke" in logs[0].read_text()


def test_fitter_raising_on_some_spectra():
    class Fussy(fitting.TRFLSQFitter):
        def __call__(self, model, x, y, **kwargs):
            if y.max() > 5:
                raise RuntimeError("too bright")
            return super().__call__(model, x, y, **kwargs)

    res = fit(GOOD * 4, "loop", fitter=Fussy())
    assert status(res) == Status.FAILED
