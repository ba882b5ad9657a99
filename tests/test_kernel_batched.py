"""The batched engines (kernel/batched.py, kernel/linear.py) against astropy's fitters.

Everything here works at the FitBlock level (no xarray). Reference fits call
astropy's fitter once per fit on the valid points, as the loop engine does.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.modeling import Fittable1DModel, Parameter, custom_model, fitting, models
from scipy.optimize import curve_fit

from xarray_modelfit.kernel.batched import batched_support, fit_batched
from xarray_modelfit.kernel.block import EngineSetup, FitBlock
from xarray_modelfit.kernel.loop import fit_loop
from xarray_modelfit.kernel.problem import Problem
from xarray_modelfit.kernel.status import Status

RNG = np.random.default_rng(20240611)


# --------------------------------------------------------------------------- helpers
def make_block(
    model, x, y, p0=None, *, valid=None, weights=None, lower=None, upper=None, active=None
):
    """A FitBlock with model.bounds merged into lower/upper, as the caller does."""
    n, m = y.shape
    p0 = np.tile(model.parameters, (n, 1)) if p0 is None else np.asarray(p0, float)
    lo = np.array([-np.inf if b[0] is None else b[0] for b in model.bounds.values()])
    hi = np.array([np.inf if b[1] is None else b[1] for b in model.bounds.values()])
    lower = np.tile(lo, (n, 1)) if lower is None else np.maximum(lower, lo)
    upper = np.tile(hi, (n, 1)) if upper is None else np.minimum(upper, hi)
    if valid is None:
        valid = np.isfinite(y)
    return FitBlock(
        x=tuple(np.atleast_2d(xx).astype(float) for xx in x),
        y=y.astype(float),
        valid=valid,
        weights=weights,
        p0=p0,
        lower=lower,
        upper=upper,
        active=np.ones(n, bool) if active is None else active,
        index=np.arange(n)[:, None],
    )


def run(model, fitter, block, covariance=False, **kw):
    return fit_batched(
        block, EngineSetup(model=model, fitter=fitter, fitter_kwargs=kw, covariance=covariance)
    )


def reference(model, fitter, block, i, lower=None, upper=None, **kw):
    """astropy fit of row i on its valid points: params, chi2, converged, param_cov."""
    mdl = model.copy()
    mdl.parameters = block.p0[i]
    if lower is not None:
        for j, nm in enumerate(mdl.param_names):
            lo = None if not np.isfinite(lower[i, j]) else lower[i, j]
            hi = None if not np.isfinite(upper[i, j]) else upper[i, j]
            getattr(mdl, nm).bounds = (lo, hi)
    v = block.valid[i]
    xs = [np.broadcast_to(xx[i] if xx.shape[0] > 1 else xx[0], v.shape)[v] for xx in block.x]
    w = None if block.weights is None else block.weights[i, v]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fitter(mdl, *xs, block.y[i, v], weights=w, **kw)
    r = (out(*xs) - block.y[i, v]) * (1 if w is None else w)
    info = fitter.fit_info
    if isinstance(fitter, fitting.LevMarLSQFitter):
        conv = info["ierr"] in (1, 2, 3, 4)
    else:
        conv = bool(info.success) and info.status > 0
    return out.parameters, float(np.sum(r**2)), conv, info.get("param_cov")


def references(model, fitter, block, rows, **kw):
    out = [reference(model, fitter, block, i, **kw) for i in rows]
    return (
        np.array([o[0] for o in out]),
        np.array([o[1] for o in out]),
        np.array([o[2] for o in out]),
        [o[3] for o in out],
    )


def assert_matches(res, ref, rows, stderr_scale=None, frac=0.99):
    """chi2 no worse than astropy's for >= frac of the fits, and the same parameters
    (rtol 1e-4, or 1e-3 stderr for values near 0) where both converged to the same
    minimum (astropy sometimes stops in a worse local minimum: not counted)."""
    p_ref, chi_ref, conv_ref, _ = ref
    chi = res.chi2[rows]
    assert np.mean(chi <= chi_ref * (1 + 1e-6)) >= frac, (chi / chi_ref).max()
    both = conv_ref & (res.status[rows] == Status.CONVERGED)
    assert both.mean() > 0.9
    same = both & (chi >= chi_ref * (1 - 1e-6))  # not a better minimum than astropy's
    assert same.mean() > 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN stderr of fixed/tied params
        scale = np.nanmedian(res.stderr[rows], axis=0) if stderr_scale is None else stderr_scale
    err = np.abs(res.params[rows] - p_ref)
    tol = 1e-4 * np.abs(p_ref) + 1e-3 * np.nan_to_num(scale, nan=1e-6)
    close = np.all(err <= tol, axis=1)
    assert np.mean(close[same]) >= frac, err[same].max(axis=0)


def gaussians(n, m=53, noise=0.1, x=None):
    x = np.linspace(-5, 5, m) if x is None else x
    amp, mu, sd = RNG.uniform(1, 5, n), RNG.uniform(-1, 1, n), RNG.uniform(0.5, 1.5, n)
    y = amp[:, None] * np.exp(-0.5 * ((x - mu[:, None]) / sd[:, None]) ** 2)
    return x, y + RNG.normal(0, noise, y.shape), np.stack([amp, mu, sd], axis=1)


# --------------------------------------------------------------------------- astropy comparisons
@pytest.mark.parametrize(
    "fitter",
    [
        fitting.TRFLSQFitter(),
        fitting.LevMarLSQFitter(),
        fitting.LMLSQFitter(),
        fitting.DogBoxLSQFitter(),
    ],
    ids=lambda f: type(f).__name__,
)
def test_gaussian_matches_astropy(fitter):
    model = models.Gaussian1D(2.0, 0.0, 1.0)
    x, y, truth = gaussians(300)
    blk = make_block(model, (x,), y)
    res = run(model, fitter, blk, covariance=True)
    rows = np.arange(300)
    ref = references(model, fitter, blk, rows)
    assert np.all(res.status == Status.CONVERGED)
    assert_matches(res, ref, rows)
    assert np.mean(np.abs(res.params - truth) < 4 * res.stderr) > 0.99  # sane stderr
    # stderr and covariance vs astropy's fit_info["param_cov"]
    cov_ref = np.array(ref[3])
    np.testing.assert_allclose(res.stderr, np.sqrt(np.einsum("nkk->nk", cov_ref)), rtol=1e-3)
    np.testing.assert_allclose(
        res.covariance, cov_ref, rtol=2e-3, atol=1e-3 * np.abs(cov_ref).max()
    )
    assert np.all(res.nfev >= 2) and np.all(res.nfev <= 100)


def test_compound_two_gaussians_plus_const():
    model = models.Gaussian1D(2, -1.5, 0.6) + models.Gaussian1D(1, 1.5, 0.6) + models.Const1D(0.2)
    x = np.linspace(-5, 5, 80)
    n = 60
    truth = np.column_stack(
        [
            RNG.uniform(1.5, 3, n),
            RNG.uniform(-2, -1, n),
            RNG.uniform(0.4, 0.8, n),
            RNG.uniform(0.8, 1.5, n),
            RNG.uniform(1, 2, n),
            RNG.uniform(0.4, 0.8, n),
            RNG.uniform(0, 0.5, n),
        ]
    )
    y = np.array([model.evaluate(x, *t) for t in truth]) + RNG.normal(0, 0.05, (n, x.size))
    blk = make_block(model, (x,), y)
    fitter = fitting.TRFLSQFitter()
    res = run(model, fitter, blk)
    assert Problem(model, {}).analytic  # the leaf-wise compound derivative is used
    rows = np.arange(n)
    assert_matches(res, references(model, fitter, blk, rows), rows)


def test_lorentz_levmar():
    model = models.Lorentz1D(2, 0, 1)
    x = np.linspace(-6, 6, 60)
    n = 60
    t = np.column_stack([RNG.uniform(1, 3, n), RNG.uniform(-1, 1, n), RNG.uniform(0.5, 2, n)])
    y = np.array([model.evaluate(x, *r) for r in t]) + RNG.normal(0, 0.05, (n, x.size))
    blk = make_block(model, (x,), y)
    fitter = fitting.LevMarLSQFitter()
    res = run(model, fitter, blk)
    rows = np.arange(n)
    ref = references(model, fitter, blk, rows)
    res.params[:, 2] = np.abs(res.params[:, 2])  # the model is even in fwhm
    ref[0][:, 2] = np.abs(ref[0][:, 2])
    assert_matches(res, ref, rows)


def test_gaussian2d_on_grid():
    model = models.Gaussian2D(1.0, 0.0, 0.0, 1.2, 0.7, 0.2)
    yy, xx = np.mgrid[-4:4:15j, -4:4:15j]
    gx, gy = xx.ravel()[None], yy.ravel()[None]
    n = 40
    t = np.column_stack(
        [
            RNG.uniform(1, 2, n),
            RNG.uniform(-1, 1, n),
            RNG.uniform(-1, 1, n),
            RNG.uniform(1.2, 1.6, n),
            RNG.uniform(0.5, 0.8, n),
            RNG.uniform(0, 0.6, n),
        ]
    )
    z = np.array([model.evaluate(gx[0], gy[0], *r) for r in t]) + RNG.normal(0, 0.02, (n, gx.size))
    blk = make_block(model, (gx, gy), z)
    fitter = fitting.TRFLSQFitter()
    res = run(model, fitter, blk)
    rows = np.arange(n)
    ref = references(model, fitter, blk, rows)

    def canonical(p):  # (sx, sy, theta) ~ (sy, sx, theta + pi/2) ~ (sx, sy, theta + pi)
        p = p.copy()
        swap = p[:, 3] < p[:, 4]
        p[swap, 3], p[swap, 4] = p[swap, 4], p[swap, 3].copy()
        p[swap, 5] += np.pi / 2
        p[:, 5] = np.mod(p[:, 5], np.pi)
        return p

    res.params[:] = canonical(res.params)
    assert_matches(res, (canonical(ref[0]),) + ref[1:], rows)


@custom_model
def decay(x, amplitude=1.0, tau=1.0, offset=0.0):
    """No fit_deriv: the engine differentiates numerically."""
    return amplitude * np.exp(-x / tau) + offset


def test_model_without_fit_deriv_and_estimate_jacobian():
    model = decay(2.0, 1.5, 0.0)
    assert model.fit_deriv is None and not Problem(model, {}).analytic
    x = np.linspace(0, 6, 50)
    n = 50
    t = np.column_stack([RNG.uniform(1, 3, n), RNG.uniform(0.8, 2, n), RNG.uniform(-0.2, 0.2, n)])
    y = t[:, :1] * np.exp(-x / t[:, 1:2]) + t[:, 2:] + RNG.normal(0, 0.02, (n, x.size))
    blk = make_block(model, (x,), y)
    fitter = fitting.TRFLSQFitter()
    res = run(model, fitter, blk)
    rows = np.arange(n)
    assert_matches(res, references(model, fitter, blk, rows), rows)
    # forced finite differences on a model that has fit_deriv give the same fits
    g = models.Gaussian1D(2, 0, 1)
    xg, yg, _ = gaussians(50)
    bg = make_block(g, (xg,), yg)
    a = run(g, fitter, bg)
    b = run(g, fitter, bg, estimate_jacobian=True)
    assert not Problem(g, {"estimate_jacobian": True}).analytic
    np.testing.assert_allclose(b.params, a.params, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.stderr, a.stderr, rtol=1e-4)


# --------------------------------------------------------------------------- constraints
def test_per_fit_bounds():
    model = models.Gaussian1D(2.0, 0.0, 1.0)
    n = 60
    x, y, truth = gaussians(n)
    lower = np.full((n, 3), -np.inf)
    upper = np.full((n, 3), np.inf)
    upper[::2, 2] = truth[::2, 2] * 0.7  # stddev bound below the truth: active at the solution
    lower[1::2, 1] = truth[1::2, 1] + 0.2  # mean bound above the truth
    p0 = np.tile(model.parameters, (n, 1))
    p0[:, 2] = np.minimum(p0[:, 2], 0.9 * upper[:, 2])  # scipy wants p0 within the bounds
    p0[:, 1] = np.maximum(p0[:, 1], lower[:, 1] + 0.1)
    blk = make_block(model, (x,), y, p0=p0, lower=lower, upper=upper)
    fitter = fitting.TRFLSQFitter()
    res = run(model, fitter, blk)
    rows = np.arange(n)
    ref = references(model, fitter, blk, rows, lower=blk.lower, upper=blk.upper)
    np.testing.assert_allclose(res.params[::2, 2], upper[::2, 2])
    np.testing.assert_allclose(res.params[1::2, 1], lower[1::2, 1])
    assert np.all(res.params >= blk.lower) and np.all(res.params <= blk.upper)
    assert np.all(res.status == Status.CONVERGED)
    assert_matches(res, ref, rows)


def test_fixed_parameter():
    model = models.Gaussian1D(2.0, 0.0, 1.0, fixed={"mean": True})
    n = 50
    x, y, truth = gaussians(n)
    p0 = np.tile(model.parameters, (n, 1))
    p0[:, 1] = truth[:, 1] + 0.05  # per-fit fixed value
    blk = make_block(model, (x,), y, p0=p0)
    fitter = fitting.TRFLSQFitter()
    res = run(model, fitter, blk, covariance=True)
    np.testing.assert_array_equal(res.params[:, 1], p0[:, 1])
    assert np.all(np.isnan(res.stderr[:, 1])) and np.all(np.isfinite(res.stderr[:, [0, 2]]))
    assert np.all(np.isnan(res.covariance[:, 1, :])) and np.all(np.isnan(res.covariance[:, :, 1]))
    rows = np.arange(n)
    ref = references(model, fitter, blk, rows)
    assert_matches(res, ref, rows)
    cov_ref = np.array(ref[3])  # free-parameter covariance, 2x2
    np.testing.assert_allclose(
        res.stderr[:, [0, 2]], np.sqrt(np.einsum("nkk->nk", cov_ref)), rtol=1e-3
    )


def _tied_sigma(m):
    return m.stddev_0


def _tied_sigma_indexed(m):
    return m[0].stddev * 1.0


def _tied_sigma_parameters(m):  # not expressible on arrays: per-fit fallback
    return float(m.parameters[2])


@pytest.mark.parametrize("tie", [_tied_sigma, _tied_sigma_indexed, _tied_sigma_parameters])
def test_tied_parameter(tie):
    model = models.Gaussian1D(2, -1.5, 0.7) + models.Gaussian1D(1, 1.5, 0.7)
    model.stddev_1.tied = tie
    x = np.linspace(-5, 5, 60)
    n = 25 if tie is _tied_sigma_parameters else 50
    sd = RNG.uniform(0.5, 0.9, n)
    truth = np.column_stack(
        [
            RNG.uniform(1.5, 3, n),
            RNG.uniform(-2, -1, n),
            sd,
            RNG.uniform(0.8, 1.5, n),
            RNG.uniform(1, 2, n),
            sd,
        ]
    )
    y = np.array([model.evaluate(x, *t) for t in truth]) + RNG.normal(0, 0.05, (n, x.size))
    blk = make_block(model, (x,), y)
    prob = Problem(model, {})
    assert prob.tie_proxy == (tie is not _tied_sigma_parameters)
    fitter = fitting.TRFLSQFitter()
    res = run(model, fitter, blk)
    np.testing.assert_array_equal(res.params[:, 5], res.params[:, 2])
    assert np.isnan(res.stderr[:, 5]).all()
    rows = np.arange(n)
    # astropy's analytic Jacobian ignores the tie (drops the column), so compare with
    # its finite-difference Jacobian, which differentiates through the tie
    ref = references(model, fitter, blk, rows, estimate_jacobian=True)
    assert_matches(res, ref, rows)


def test_weights_and_invalid_points():
    model = models.Gaussian1D(2.0, 0.0, 1.0)
    n = 60
    x, y, _ = gaussians(n)
    sigma = RNG.uniform(0.05, 0.3, y.shape)
    y = y + RNG.normal(0, 1, y.shape) * sigma
    valid = RNG.random(y.shape) > 0.15
    y[~valid] = np.nan
    blk = make_block(model, (x,), y, weights=np.where(valid, 1 / sigma, np.nan), valid=valid)
    fitter = fitting.TRFLSQFitter()
    res = run(model, fitter, blk)
    rows = np.arange(n)
    ref = references(model, fitter, blk, rows)
    assert_matches(res, ref, rows)
    np.testing.assert_allclose(res.stderr, [np.sqrt(np.diag(c)) for c in ref[3]], rtol=1e-3)
    # weighted covariance is absolute, like curve_fit(absolute_sigma=True)
    for i in range(5):
        v = valid[i]
        _, pcov = curve_fit(
            lambda xx, a, mu, s: models.Gaussian1D.evaluate(xx, a, mu, s),
            x[v],
            y[i, v],
            p0=res.params[i],
            sigma=sigma[i, v],
            absolute_sigma=True,
        )
        np.testing.assert_allclose(res.stderr[i], np.sqrt(np.diag(pcov)), rtol=1e-3)


def test_stderr_matches_curve_fit_unweighted():
    model = models.Gaussian1D(2.0, 0.0, 1.0)
    x, y, _ = gaussians(10, noise=0.2)
    res = run(model, fitting.LMLSQFitter(), make_block(model, (x,), y))
    for i in range(10):
        popt, pcov = curve_fit(
            lambda xx, a, mu, s: models.Gaussian1D.evaluate(xx, a, mu, s), x, y[i], p0=[2, 0, 1]
        )
        np.testing.assert_allclose(res.params[i], popt, rtol=1e-4, atol=1e-4 * np.sqrt(pcov[1, 1]))
        np.testing.assert_allclose(res.stderr[i], np.sqrt(np.diag(pcov)), rtol=1e-3)
        np.testing.assert_allclose(
            res.chi2[i], np.sum((models.Gaussian1D.evaluate(x, *popt) - y[i]) ** 2), rtol=1e-6
        )


# --------------------------------------------------------------------------- robustness
class Fragile(Fittable1DModel):
    """A Gaussian whose evaluate raises for negative widths (batch-wide exception)."""

    amplitude = Parameter(default=1.0)
    mean = Parameter(default=0.0)
    stddev = Parameter(default=1.0)

    @staticmethod
    def evaluate(x, amplitude, mean, stddev):
        if np.any(stddev < 0):
            raise ValueError("negative stddev")
        return models.Gaussian1D.evaluate(x, amplitude, mean, stddev)

    @staticmethod
    def fit_deriv(x, amplitude, mean, stddev):
        if np.any(amplitude > 100):
            raise ValueError("huge amplitude")
        return models.Gaussian1D.fit_deriv(x, amplitude, mean, stddev)


def test_degenerate_fits_do_not_affect_neighbours():
    model = Fragile(2.0, 0.0, 1.0)
    n_good = 20
    x, y_good, _ = gaussians(n_good)
    fitter = fitting.TRFLSQFitter()
    clean = run(model, fitter, make_block(model, (x,), y_good))
    bad = np.stack([np.zeros_like(x), np.full_like(x, 3.0), np.full_like(x, np.nan), y_good[0],
                    y_good[1], y_good[2]])  # fmt: skip
    y = np.concatenate([y_good[:10], bad, y_good[10:]])
    p0 = np.tile(model.parameters, (len(y), 1))
    p0[13, 2] = -1.0  # evaluate raises for this fit
    p0[14, 1] = np.inf  # non-finite model at p0
    p0[15, 0] = 1e3  # fit_deriv raises for this fit
    res = run(model, fitter, make_block(model, (x,), y, p0=p0, valid=np.isfinite(y)))
    good = np.r_[0:10, 16:26]
    np.testing.assert_allclose(res.params[good], clean.params, rtol=1e-12)
    np.testing.assert_allclose(res.stderr[good], clean.stderr, rtol=1e-9)
    np.testing.assert_array_equal(res.status[good], clean.status)
    assert res.status[12] == Status.SKIPPED_NO_DATA and np.isnan(res.params[12]).all()
    assert res.status[13] == Status.FAILED and "negative stddev" in res.messages[13]
    assert res.status[14] == Status.SINGULAR and np.isnan(res.params[14]).all()
    assert res.status[15] == Status.FAILED and "huge amplitude" in res.messages[15]
    # zero data: either singular or a vanishing amplitude; flat data: finite or flagged
    assert res.status[10] == Status.SINGULAR or abs(res.params[10, 0]) < 1e-6
    assert res.status[11] >= Status.SINGULAR or np.isfinite(res.params[11]).all()


def test_max_iterations_and_inactive_rows():
    model = models.Gaussian1D(2.0, 0.0, 1.0)
    x, y, _ = gaussians(10)
    active = np.ones(10, bool)
    active[3] = False
    blk = make_block(model, (x,), y, active=active)
    res = run(model, fitting.TRFLSQFitter(), blk, maxiter=2)
    fit = np.flatnonzero(active)
    assert np.all(res.status[fit] == Status.MAX_ITERATIONS)
    assert np.all(res.nfev[fit] == 2) and np.isfinite(res.params[fit]).all()
    assert np.isnan(res.params[3]).all() and res.nfev[3] == 0 and res.status[3] == 0
    # all parameters fixed: nothing to fit, one evaluation
    fixed = models.Gaussian1D(
        2.0, 0.0, 1.0, fixed={"amplitude": True, "mean": True, "stddev": True}
    )
    r0 = run(fixed, fitting.TRFLSQFitter(), make_block(fixed, (x,), y))
    assert np.all(r0.status == Status.CONVERGED) and np.all(r0.nfev == 1)
    np.testing.assert_allclose(r0.chi2, np.sum((fixed(x) - y) ** 2, axis=1))


def test_order_and_block_split_independence(monkeypatch):
    model = models.Gaussian1D(2.0, 0.0, 1.0)
    x, y, _ = gaussians(200)
    y[5, :10] = np.nan
    fitter = fitting.TRFLSQFitter()
    whole = run(model, fitter, make_block(model, (x,), y))
    perm = RNG.permutation(200)
    permuted = run(model, fitter, make_block(model, (x,), y[perm]))
    np.testing.assert_allclose(permuted.params, whole.params[perm], rtol=1e-12)
    np.testing.assert_array_equal(permuted.nfev, whole.nfev[perm])
    parts = [
        run(model, fitter, make_block(model, (x,), y[s]))
        for s in (slice(0, 7), slice(7, 150), slice(150, 200))
    ]
    np.testing.assert_allclose(np.concatenate([p.params for p in parts]), whole.params, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([p.stderr for p in parts]), whole.stderr, rtol=1e-9)
    # the engine's own slicing of large blocks
    monkeypatch.setattr("xarray_modelfit.kernel.batched._CHUNK_ELEMENTS", 30 * x.size)
    sliced = run(model, fitter, make_block(model, (x,), y))
    np.testing.assert_allclose(sliced.params, whole.params, rtol=1e-12)
    np.testing.assert_array_equal(sliced.nfev, whole.nfev)


def test_per_fit_x_grid():
    model = models.Gaussian1D(2.0, 0.0, 1.0)
    n, m = 30, 40
    xs = np.sort(RNG.uniform(-5, 5, (n, m)), axis=1)
    t = np.column_stack([RNG.uniform(1, 3, n), RNG.uniform(-1, 1, n), RNG.uniform(0.6, 1.4, n)])
    y = np.array([model.evaluate(xs[i], *t[i]) for i in range(n)]) + RNG.normal(0, 0.05, (n, m))
    blk = make_block(model, (xs,), y)
    fitter = fitting.TRFLSQFitter()
    res = run(model, fitter, blk)
    assert_matches(res, references(model, fitter, blk, np.arange(n)), np.arange(n))


# --------------------------------------------------------------------------- linear
def test_linear_polynomial_vs_polyfit_and_astropy():
    model = models.Polynomial1D(2)
    n, m = 300, 40
    x = np.linspace(0, 10, m)
    c = RNG.normal(size=(n, 3))
    y = c[:, :1] + c[:, 1:2] * x + c[:, 2:3] * x**2 + RNG.normal(0, 0.5, (n, m))
    valid = np.ones((n, m), bool)
    valid[::7, 5:9] = False  # two mask groups
    y[~valid] = np.nan
    fitter = fitting.LinearLSQFitter()
    assert batched_support(model, fitter) is None
    res = run(model, fitter, make_block(model, (x,), y, valid=valid), covariance=True)
    assert np.all(res.status == Status.CONVERGED) and np.all(res.nfev == 1)
    for i in range(0, n, 37):
        v = valid[i]
        p, cov = np.polyfit(x[v], y[i, v], 2, cov=True)
        np.testing.assert_allclose(res.params[i], p[::-1], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(res.covariance[i], cov[::-1, ::-1], rtol=1e-8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a = fitter(model, x[v], y[i, v])
        np.testing.assert_allclose(res.params[i], a.parameters, rtol=1e-9, atol=1e-10)


def test_linear_weights_fixed_2d_and_sums():
    fitter = fitting.LinearLSQFitter()
    # per-fit weights and masks: one stacked SVD
    model = models.Linear1D(1.0, 0.0)
    n, m = 40, 25
    x = np.linspace(-2, 2, m)
    y = RNG.normal(size=(n, 1)) * x + RNG.normal(size=(n, 1)) + RNG.normal(0, 0.1, (n, m))
    w = RNG.uniform(0.5, 3, (n, m))
    valid = RNG.random((n, m)) > 0.1
    res = run(model, fitter, make_block(model, (x,), y, valid=valid, weights=w))
    for i in range(n):
        v = valid[i]
        p, cov = np.polyfit(x[v], y[i, v], 1, w=w[i, v], cov="unscaled")
        np.testing.assert_allclose(res.params[i], p, rtol=1e-9)
        np.testing.assert_allclose(res.stderr[i], np.sqrt(np.diag(cov)), rtol=1e-8)
    # per-fit x grids
    xs = np.sort(RNG.uniform(-2, 2, (n, m)), axis=1)
    res = run(model, fitter, make_block(model, (xs,), y))
    for i in range(n):
        np.testing.assert_allclose(res.params[i], np.polyfit(xs[i], y[i], 1), rtol=1e-9)
    # fixed parameter, per-fit fixed value, vs astropy
    model = models.Polynomial1D(2, c1=0.5, fixed={"c1": True})
    p0 = np.tile(model.parameters, (n, 1))
    p0[:, 1] = RNG.normal(size=n)
    y2 = RNG.normal(size=(n, 1)) + p0[:, 1:2] * x + 0.3 * x**2 + RNG.normal(0, 0.1, (n, m))
    res = run(model, fitter, make_block(model, (x,), y2, p0=p0))
    for i in range(0, n, 9):
        mdl = model.copy()
        mdl.parameters = p0[i]
        a = fitter(mdl, x, y2[i])
        np.testing.assert_allclose(res.params[i], a.parameters, rtol=1e-9, atol=1e-12)
    # Planar2D on a grid vs lstsq
    model = models.Planar2D()
    gy, gx = (g.ravel()[None] for g in np.mgrid[0:5, 0:6])
    z = RNG.normal(size=(n, 3)) @ np.vstack([gx, gy, np.ones_like(gx)]) + RNG.normal(
        0, 0.1, (n, gx.size)
    )
    res = run(model, fitter, make_block(model, (gx, gy), z))
    sol = np.linalg.lstsq(np.vstack([gx, gy, np.ones_like(gx)]).T.astype(float), z.T, rcond=None)[
        0
    ].T
    np.testing.assert_allclose(res.params, sol, rtol=1e-9, atol=1e-12)
    # a sum of linear models (astropy's LinearLSQFitter refuses compounds)
    model = models.Linear1D(1.0, 0.0, fixed={"intercept": True}) + models.Const1D(1.0)
    res = run(model, fitter, make_block(model, (x,), y))
    sol = np.linalg.lstsq(np.vstack([x, np.ones_like(x)]).T, y.T, rcond=None)[0].T
    np.testing.assert_allclose(res.params[:, [0, 2]], sol, rtol=1e-9, atol=1e-12)
    # a degenerate design (two constant terms) is flagged, not solved
    model = models.Polynomial1D(1) + models.Const1D()
    res = run(model, fitter, make_block(model, (x,), y))
    assert np.all(res.status == Status.SINGULAR) and np.isnan(res.params).all()


# --------------------------------------------------------------------------- support
class MyFitter(fitting.TRFLSQFitter):
    pass


class Scalar1D(Fittable1DModel):
    amplitude = Parameter(default=1.0)

    @staticmethod
    def evaluate(x, amplitude):
        return float(amplitude) * np.ones_like(x)  # cannot take parameter arrays


def test_batched_support_reasons():
    g = models.Gaussian1D()
    for f in (
        fitting.TRFLSQFitter(),
        fitting.LevMarLSQFitter(),
        fitting.LMLSQFitter(),
        fitting.DogBoxLSQFitter(),
    ):
        assert batched_support(g, f) is None
    assert batched_support(g + models.Const1D(), fitting.TRFLSQFitter()) is None
    for f in (fitting.SLSQPLSQFitter(), fitting.SimplexLSQFitter(), MyFitter()):
        reason = batched_support(g, f)
        assert isinstance(reason, str) and type(f).__name__ in reason
    assert "broadcast" in batched_support(Scalar1D(), fitting.TRFLSQFitter())
    assert "linear" in batched_support(g, fitting.LinearLSQFitter())
    assert "domain" in batched_support(models.Chebyshev1D(2), fitting.LinearLSQFitter())
    assert batched_support(models.Chebyshev1D(2, domain=(0, 1)), fitting.LinearLSQFitter()) is None
    tied = models.Polynomial1D(1)
    tied.c1.tied = lambda m: m.c0
    assert "tied" in batched_support(tied, fitting.LinearLSQFitter())
    with pytest.raises(ValueError, match="SLSQPLSQFitter"):
        x, y, _ = gaussians(2)
        run(g, fitting.SLSQPLSQFitter(), make_block(g, (x,), y))


# --------------------------------------------------------------------------- scale
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_data_scale_does_not_make_fits_singular(scale):
    """The rank rule uses normalised columns of J, so a fit at 1e30 or 1e-30 is not
    SINGULAR. MINPACK (LevMar, LM) is scale-invariant: the same mean and stddev as
    unscaled. scipy's TRF/dogbox with x_scale=1 are not (gtol is absolute, xtol
    relative to ||x||): they stop where astropy's fitter stops."""
    model = models.Gaussian1D(2.0, 0.0, 1.0)
    x, y, _ = gaussians(20)
    p0 = np.tile([1.5, 0.2, 1.3], (20, 1))
    ps = p0 * [scale, 1, 1]
    for fitter in (fitting.LevMarLSQFitter(), fitting.LMLSQFitter()):
        base = run(model, fitter, make_block(model, (x,), y, p0=p0))
        res = run(model, fitter, make_block(model, (x,), y * scale, p0=ps), covariance=True)
        assert np.all(res.status == Status.CONVERGED) and np.all(base.status == Status.CONVERGED)
        np.testing.assert_allclose(res.params[:, 1:], base.params[:, 1:], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(res.params[:, 0] / scale, base.params[:, 0], rtol=1e-6)
        np.testing.assert_allclose(res.stderr[:, 1:], base.stderr[:, 1:], rtol=1e-4)
    # TRF: at 1e-30 gtol stops astropy's fitter at the start; at 1e30 J^T J has a
    # condition of 1e60 and scipy's path is rounding-driven (some fits run off to a
    # flat Gaussian, rank-deficient for both engines): compare with the loop engine
    fitter = fitting.TRFLSQFitter()
    blk = make_block(model, (x,), y * scale, p0=ps)
    res = run(model, fitter, blk)
    ref = fit_loop(blk, EngineSetup(model=model, fitter=fitter, fitter_kwargs={}))
    if scale < 1:
        assert np.all(res.status == Status.CONVERGED)
        np.testing.assert_allclose(res.params, ref.params, rtol=1e-12)
    singular = res.status == Status.SINGULAR
    assert np.all(ref.status[singular] == Status.SINGULAR) and singular.mean() < 0.25
    assert np.all(res.chi2[~singular] <= ref.chi2[~singular] * (1 + 1e-6))


def test_badly_scaled_fits_are_handed_to_astropys_fitter():
    """A cubic in days since 1800: J^T J spans 1e29, beyond the normal equations. Those fits
    are fitted by the fitter itself and land on the least-squares optimum (np.polyfit)."""
    t = np.arange(212) * 365.25
    rng = np.random.default_rng(0)
    coef = np.array([3e-14, -4e-9, 1e-4, 8.0])
    y = np.polyval(coef, t)[None, :] + rng.normal(0, 0.7, (6, t.size))
    block = FitBlock(
        x=(t[None, :],), y=y, valid=np.ones_like(y, bool), weights=None,
        p0=np.zeros((6, 4)), lower=np.full((6, 4), -np.inf), upper=np.full((6, 4), np.inf),
        active=np.ones(6, bool), index=np.arange(6)[:, None],
    )  # fmt: skip
    setup = EngineSetup(
        model=models.Polynomial1D(3), fitter=fitting.TRFLSQFitter(), fitter_kwargs={}
    )
    res = fit_batched(block, setup)
    ref = np.array([np.sum((np.polyval(np.polyfit(t, yi, 3), t) - yi) ** 2) for yi in y])
    np.testing.assert_allclose(res.chi2, ref, rtol=1e-6)
    loop = fit_loop(block, setup)
    np.testing.assert_array_equal(res.status, loop.status)
    np.testing.assert_allclose(res.params, loop.params, rtol=1e-10)
