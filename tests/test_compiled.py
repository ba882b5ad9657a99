"""The compiled TRF (kernel/compiled.py) against the numpy solver it mirrors, and astropy.

The compiled kernels follow ``_lsq.trf`` step by step, fit by fit: on the same
blocks they must give the same parameters, statuses, ``nfev`` and covariances
as the numpy solver (up to rounding in sums over the points), and so land
where astropy's ``TRFLSQFitter`` lands.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.modeling import fitting, models
from test_kernel_batched import assert_matches, make_block, references  # noqa: E402

from xarray_modelfit.kernel import compiled
from xarray_modelfit.kernel.batched import fit_batched
from xarray_modelfit.kernel.block import EngineSetup
from xarray_modelfit.kernel.problem import Problem
from xarray_modelfit.kernel.status import Status


def both(model, block, fitter=None, **kw):
    """(compiled result, numpy-solver result) of the same block."""
    fitter = fitter or fitting.TRFLSQFitter()
    setup = EngineSetup(model=model, fitter=fitter, fitter_kwargs=kw, covariance=True)
    fast = fit_batched(block, setup)
    spec = compiled.spec
    compiled.spec = lambda *a: None
    try:
        slow = fit_batched(block, setup)
    finally:
        compiled.spec = spec
    return fast, slow


def assert_same(fast, slow, rtol=1e-7, frac=1.0, nfev_frac=None):
    """Same statuses, parameters, chi2 and stderr on ``frac`` of the fits, and the
    same ``nfev`` (on ``nfev_frac`` of them if given)."""
    same_status = fast.status == slow.status
    same_nfev = fast.nfev == slow.nfev
    if nfev_frac is not None:
        assert same_nfev.mean() >= nfev_frac
        same_nfev[:] = True
    with np.errstate(invalid="ignore"):
        close = np.all(
            np.isclose(fast.params, slow.params, rtol=rtol, atol=0, equal_nan=True), axis=1
        ) & np.isclose(fast.chi2, slow.chi2, rtol=rtol, atol=0, equal_nan=True)
        close &= np.all(
            np.isclose(fast.stderr, slow.stderr, rtol=1e-5, atol=0, equal_nan=True), axis=1
        )
    ok = same_status & same_nfev & close
    assert ok.mean() >= frac, (same_status.mean(), same_nfev.mean(), close.mean())


def lines(rng, n, m=60, noise=0.1, x=None, k=1, continuum=0.0):
    x = np.linspace(-6, 6, m) if x is None else x
    y = np.full((n, m), continuum) + rng.normal(0, noise, (n, m))
    for _ in range(k):
        amp = rng.uniform(1, 4, n)
        mu = rng.uniform(-4, 4, n) if k > 1 else rng.uniform(-1, 1, n)
        sd = rng.uniform(0.3, 1.2, n)
        y += amp[:, None] * np.exp(-0.5 * ((x - mu[:, None]) / sd[:, None]) ** 2)
    return x, y


# --------------------------------------------------------------------------- when it applies
@pytest.mark.parametrize(
    ("model", "fitter", "kw", "expected"),
    [
        (models.Gaussian1D(), fitting.TRFLSQFitter(), {}, True),
        (models.Gaussian1D() + models.Const1D(), fitting.DogBoxLSQFitter(), {}, True),
        (
            models.Gaussian1D() + models.Gaussian1D() + models.Linear1D(),
            fitting.TRFLSQFitter(),
            {},
            True,
        ),
        (models.Gaussian1D() + models.Const1D(), fitting.LevMarLSQFitter(), {}, True),
        (models.Gaussian1D(), fitting.LMLSQFitter(), {}, True),
        (models.Gaussian1D(), fitting.TRFLSQFitter(), {"estimate_jacobian": True}, False),
        (models.Lorentz1D(), fitting.TRFLSQFitter(), {}, False),
        (models.Gaussian1D() * models.Const1D(), fitting.TRFLSQFitter(), {}, False),
        (models.Gaussian2D(), fitting.TRFLSQFitter(), {}, False),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict | bool) else str(v),
)
def test_spec_says_when_the_compiled_trf_applies(model, fitter, kw, expected):
    from xarray_modelfit.kernel.problem import fitter_kind

    minpack = type(fitter).__name__ in ("LevMarLSQFitter", "LMLSQFitter")
    assert fitter_kind(fitter) == "nonlinear"
    prob = Problem(model, kw, minpack=minpack)
    assert (compiled.spec(prob, model.n_inputs) is not None) is expected


def test_spec_refuses_ties_and_subclasses():
    class MyGauss(models.Gaussian1D):
        pass

    tied = models.Gaussian1D() + models.Gaussian1D()
    tied.stddev_1.tied = lambda m: m.stddev_0
    for model in (tied, MyGauss()):
        assert compiled.spec(Problem(model, {}), 1) is None


# --------------------------------------------------------------------------- against the numpy solver
FITTERS = pytest.mark.parametrize(
    "fitter",
    [fitting.TRFLSQFitter(), fitting.LevMarLSQFitter(), fitting.LMLSQFitter()],
    ids=lambda f: type(f).__name__,
)


@FITTERS
def test_gaussian_same_as_numpy_solver_and_astropy(fitter):
    rng = np.random.default_rng(103)
    x, y = lines(rng, 300)
    model = models.Gaussian1D(2, 0, 1)
    block = make_block(model, [x], y)
    fast, slow = both(model, block, fitter)
    assert (fast.status == Status.CONVERGED).mean() > 0.95
    assert_same(fast, slow)
    rows = np.arange(0, 300, 10)
    assert_matches(fast, references(model, fitter, block, rows), rows)


@FITTERS
def test_two_lines_on_a_sloped_baseline_same_as_numpy_solver(fitter):
    rng = np.random.default_rng(104)
    x, y = lines(rng, 200, m=80, k=2, continuum=0.5)
    y += 0.05 * x
    model = models.Gaussian1D(2, -2, 1) + models.Gaussian1D(2, 2, 1) + models.Linear1D(0, 0.3)
    block = make_block(model, [x], y)
    fast, slow = both(model, block, fitter)
    assert_same(fast, slow, frac=0.97)  # two-line fits are chaotic: a few differ at 1e-7
    rows = np.arange(0, 200, 10)
    ref = references(model, fitter, block, rows)
    assert np.mean(fast.chi2[rows] <= ref[1] * (1 + 1e-6)) >= 0.9


@FITTERS
def test_bounds_fixed_pinned_weights_and_invalid_points(fitter):
    rng = np.random.default_rng(105)
    n, m = 240, 50
    x, y = lines(rng, n, m=m, continuum=0.3)
    model = models.Gaussian1D(2, 0, 1) + models.Const1D(0.2)
    model.amplitude_1.fixed = True
    lower = np.tile([-np.inf, -0.5, 0.05, -np.inf], (n, 1))
    upper = np.tile([np.inf, 0.5, 3.0, np.inf], (n, 1))
    lower[::7, 2] = upper[::7, 2] = 0.8  # stddev pinned by equal bounds in every 7th fit
    valid = rng.random((n, m)) > 0.1
    y[~valid] = np.nan
    weights = rng.uniform(0.5, 2.0, (n, m))
    block = make_block(model, [x], y, valid=valid, weights=weights, lower=lower, upper=upper)
    fast, slow = both(model, block, fitter)
    assert_same(fast, slow)
    assert np.all(fast.params[::7, 2][fast.status[::7] <= Status.MAX_ITERATIONS] == 0.8)
    held = fast.params[:, 1][fast.status <= Status.MAX_ITERATIONS]
    assert np.all((held >= -0.5) & (held <= 0.5))
    assert np.all(fast.params[:, 3][fast.status <= Status.MAX_ITERATIONS] == 0.2)


@FITTERS
def test_per_fit_x_grids_same_as_numpy_solver(fitter):
    rng = np.random.default_rng(106)
    n, m = 100, 40
    x = np.sort(rng.uniform(-5, 5, (n, m)), axis=1)
    y = 3 * np.exp(-0.5 * ((x - 0.3) / 0.8) ** 2) + rng.normal(0, 0.1, (n, m))
    model = models.Gaussian1D(2, 0, 1)
    block = make_block(model, [x], y)
    fast, slow = both(model, block, fitter)
    assert_same(fast, slow)


@FITTERS
def test_statuses_zeros_noise_nonfinite_and_iteration_limit(fitter):
    rng = np.random.default_rng(107)
    x, y = lines(rng, 40)
    y[0] = 0.0  # all zeros
    y[1] = rng.normal(0, 1, y.shape[1])  # noise only
    model = models.Gaussian1D(2, 0, 1)
    p0 = np.tile(model.parameters, (40, 1))
    p0[2, 2] = 0.0  # stddev 0: the model is non-finite at the start
    block = make_block(model, [x], y, p0=p0)
    block.lower[2, 2] = -np.inf  # let the start through the default stddev bound
    fast, slow = both(model, block, fitter)
    assert_same(fast, slow)
    assert fast.status[2] == Status.SINGULAR
    assert "non-finite" in fast.messages[2]
    limited, limited_slow = both(model, block, fitter, maxiter=3)
    assert_same(limited, limited_slow)
    assert (limited.status == Status.MAX_ITERATIONS).sum() > 30
    assert limited.nfev.max() == 3


@FITTERS
def test_narrow_lines_far_wings_and_a_line_far_from_the_data(fitter):
    rng = np.random.default_rng(108)
    """Far wings give values far below the smallest normal float (flushed to zero in
    the compiled kernels); a line 40 sigma away from all points needs J rescaled."""
    x = np.linspace(-50, 50, 2001)
    n = 60
    sd = rng.uniform(0.1, 0.3, n)
    mu = rng.uniform(-20, 20, n)
    y = 2 * np.exp(-0.5 * ((x - mu[:, None]) / sd[:, None]) ** 2)
    y += rng.normal(0, 0.05, y.shape)
    model = models.Gaussian1D(1, 0, 0.2)
    p0 = np.column_stack([np.ones(n), mu + 0.05, np.full(n, 0.2)])
    p0[0] = [1.0, 200.0, 2.0]  # far from every point: J of order exp(-0.5 * 75^2)
    block = make_block(model, [x], y, p0=p0)
    fast, slow = both(model, block, fitter)
    # the flushed wings move J^T J by less than 1e-150 of its entries; a trial step on
    # the edge of acceptance may go the other way, so a fit may take one more step
    assert_same(fast, slow, nfev_frac=0.95)
    good = np.arange(1, n)
    assert np.all(np.abs(fast.params[good, 1] - mu[good]) < 0.02)
    assert fast.status[0] == slow.status[0]


@FITTERS
def test_order_and_chunking_do_not_matter(fitter):
    rng = np.random.default_rng(109)
    x, y = lines(rng, 120, continuum=0.2)
    model = models.Gaussian1D(2, 0, 1) + models.Const1D(0)
    block = make_block(model, [x], y)
    fast, _ = both(model, block, fitter)
    perm = rng.permutation(120)
    shuffled = make_block(model, [x], y[perm])
    again, _ = both(model, shuffled, fitter)
    np.testing.assert_array_equal(again.params, fast.params[perm])
    np.testing.assert_array_equal(again.nfev, fast.nfev[perm])


# --------------------------------------------------------------------------- eigen-solves
@pytest.mark.parametrize("K", [1, 2, 3, 5, 9, 14])
def test_eigh_matches_numpy(K):
    rng = np.random.default_rng(110)
    X = rng.normal(size=(300, 30, K)) * 10.0 ** rng.uniform(-5, 5, (300, 1, K))
    A = X.transpose(0, 2, 1) @ X
    A[0] = 0.0
    A[1] = np.eye(K)
    w, V = compiled.eigh(A)
    w_ref = np.linalg.eigvalsh(A)
    scale = np.abs(A).max(axis=(1, 2), initial=0.0)[:, None] + 1e-300
    assert np.all(np.abs(w - w_ref) <= 1e-13 * scale)
    assert np.all(np.diff(w, axis=1) >= 0)
    back = (V * w[:, None, :]) @ V.transpose(0, 2, 1)
    assert np.all(np.abs(back - A) <= 1e-13 * scale[:, :, None])
    np.testing.assert_allclose(
        V.transpose(0, 2, 1) @ V, np.broadcast_to(np.eye(K), A.shape), atol=1e-13
    )


@pytest.mark.parametrize("K", [1, 3, 6])
def test_inv_matches_numpy_and_marks_singular(K):
    rng = np.random.default_rng(111)
    A = rng.normal(size=(200, K, K)) + 3 * np.eye(K)
    A[0] = 0.0
    out = compiled.inv(A)
    assert np.all(np.isnan(out[0]))
    np.testing.assert_allclose(out[1:], np.linalg.inv(A[1:]), rtol=1e-10, atol=1e-12)


def test_eigh_extreme_scales_and_non_finite():
    """Entries near the overflow and underflow limits, and NaN / inf (NaN eigenvalues)."""
    big = np.array([[1e160, 9e159], [9e159, 1e160]])
    tiny = np.array([[3e-320, 1e-320], [1e-320, 2e-320]])
    A = np.stack(
        [big, big * 1e-320, tiny, [[np.nan, 0.0], [0.0, 1.0]], [[np.inf, 1.0], [1.0, 1.0]]]
    )
    w, _ = compiled.eigh(A)
    np.testing.assert_allclose(w[0], np.linalg.eigvalsh(big), rtol=1e-14)
    np.testing.assert_allclose(w[1], np.linalg.eigvalsh(big * 1e-320), rtol=1e-12)
    assert np.all(np.isfinite(w[2])) and np.all(np.abs(w[2]) < 1e-319)
    assert np.all(np.isnan(w[3:]))


@pytest.mark.parametrize("fitter", [fitting.LevMarLSQFitter(), fitting.LMLSQFitter()], ids=str)
def test_minpack_bounds_clip_what_the_model_sees(fitter):
    """astropy's MINPACK fitters clip the parameters the model sees to the bounds and
    let fit_deriv see them as they are (no fixed parameters): both solvers agree."""
    rng = np.random.default_rng(112)
    x, y = lines(rng, 150, continuum=0.1)
    model = models.Gaussian1D(2, 0, 1) + models.Const1D(0)
    n = y.shape[0]
    lower = np.tile([-np.inf, -0.3, 0.6, -np.inf], (n, 1))
    upper = np.tile([3.0, 0.3, np.inf, np.inf], (n, 1))
    block = make_block(model, [x], y, lower=lower, upper=upper)
    fast, slow = both(model, block, fitter)
    # a fit held on two bounds at once is ill-posed for LM (the model is flat beyond them,
    # the raw Jacobian is not): rounding can send the two solvers along other paths
    assert_same(fast, slow, frac=0.97)
    assert np.mean(fast.chi2 <= slow.chi2 * (1 + 1e-3)) >= 0.99
    assert (fast.status <= Status.MAX_ITERATIONS).mean() > 0.9
    ok = fast.status <= Status.MAX_ITERATIONS
    assert np.all((fast.params[ok, 1] >= -0.3) & (fast.params[ok, 1] <= 0.3))


@FITTERS
def test_a_line_whose_values_at_the_data_are_subnormal(fitter):
    """Every point 37.6-38.6 sigma from the line: exp gives subnormal numbers, J is tiny
    but not zero, and both solvers rescale it the same way."""
    x = np.linspace(-5, 5, 40)
    n = 6
    y = np.exp(-0.5 * x**2) + np.random.default_rng(113).normal(0, 0.01, (n, 40))
    model = models.Gaussian1D(1, 0, 1)
    p0 = np.column_stack([np.ones(n), 5 + 0.1 * np.linspace(37.7, 38.4, n), np.full(n, 0.1)])
    block = make_block(model, [x], y, p0=p0)
    fast, slow = both(model, block, fitter)
    assert_same(fast, slow)
