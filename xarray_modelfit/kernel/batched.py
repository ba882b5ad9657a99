"""Batched non-linear least squares: one block of fits solved together.

``fit_batched`` minimises, independently for every fit of a ``FitBlock``,
``F(q) = 1/2 sum_j r_j^2``, ``r_j = w_j (f(x_j; p(q)) - y_j)`` over the valid
points, ``q`` being the free parameters (``p`` adds fixed values and tied
expressions). All fits advance in lock-step through numpy operations over a
leading batch axis, each with its own state (no fit influences another), and
fits that terminate leave the working arrays. Blocks are processed in slices
of ~2**18 points to bound temporaries.

Algorithm: the fitter's own, step by step (:mod:`xarray_modelfit.kernel._lsq`),
so that each fit lands where astropy's fitter lands: scipy's TRF for
``TRFLSQFitter`` and ``DogBoxLSQFitter`` (``x_scale=1``, Coleman-Li scaling and
reflective, strictly feasible steps with bounds), MINPACK's ``lmder`` for
``LevMarLSQFitter`` and ``LMLSQFitter`` (column-norm scaling; bounds as
astropy's ``use_min_max_bounds``: the model sees the parameters clipped to
their bounds). Tolerances and limits as astropy passes them: ``xtol=acc``,
``maxfev=maxiter``, scipy's ``ftol``/``gtol`` (``leastsq``'s for LevMar);
``nfev`` counts residual evaluations as the fitter does. A non-finite model
value ends a fit as ``SINGULAR``, as astropy's ``NonFiniteValueError`` does.
A free parameter with equal bounds is held at that value, as the loop engine
fixes it.

Residuals and Jacobians (analytic or finite differences, ties by the chain
rule) come from :class:`~xarray_modelfit.kernel.problem.Problem`.

Covariance as astropy's ``_NLLSQFitter``: ``pinv(J^T J)`` at the solution,
singular values below ``eps max(J.shape) s[0]`` dropped (on normalised columns
of J, so independent of the parameters' scale), times ``chi2 / (N - K)``
without weights, none if ``N <= K``. A Jacobian whose normalised columns are
dependent by that rule marks the fit ``SINGULAR`` (the loop engine's
:func:`~xarray_modelfit.kernel.loop.rank_deficient`).
"""

from __future__ import annotations

import numpy as np

from xarray_modelfit.kernel import _lsq, compiled
from xarray_modelfit.kernel.block import BlockResult, EngineSetup, FitBlock
from xarray_modelfit.kernel.problem import (
    NONLINEAR_FITTERS,
    Data,
    Problem,
    batched_support,
    fitter_kind,
)
from xarray_modelfit.kernel.status import Status

__all__ = ["NONLINEAR_FITTERS", "batched_support", "fit_batched"]

_CHUNK_ELEMENTS = 2**20  # fits x points per pass: bounds temporaries, keeps arrays in cache


# --------------------------------------------------------------------------- engine
class _Evaluator:
    """The residual side of :mod:`xarray_modelfit.kernel._lsq` for the running fits."""

    def __init__(self, prob: Problem, data: Data):
        self.prob, self.d = prob, data

    @property
    def rows(self) -> np.ndarray:
        return self.d.rows

    @property
    def pinned(self) -> np.ndarray:
        return self.d.pinned

    def take(self, keep: np.ndarray) -> None:
        self.d = self.d.take(keep)

    def failed(self) -> np.ndarray:
        if not self.prob.failed:
            return np.zeros(self.d.rows.size, bool)
        return np.isin(self.d.rows, list(self.prob.failed))

    def resid(self, q: np.ndarray) -> np.ndarray:
        return self.prob.resid(q, self.d)

    def normal(self, q: np.ndarray, r: np.ndarray, idx: np.ndarray) -> tuple:
        d = self.d
        if idx.size != d.rows.size:
            d = d.take(idx, skip=("y",) if self.prob.analytic else ())
        J = _jac(self.prob, q, d, r)
        A, g = _lsq.normal(J, r)
        # J^T J under- or overflows for a model far from the data (a Gaussian
        # 30 sigma away): those rows get J scaled by a power of two ``sig``
        diag = np.einsum("nkk->nk", A)
        with np.errstate(invalid="ignore"):
            big, small = diag.max(axis=1, initial=0.0), diag.min(axis=1, initial=1.0)
        sig = np.ones(len(A))
        redo = np.flatnonzero(~(big < 1e200) | (small < 1e-200))
        if redo.size:
            mx = np.max([np.max(np.abs(Jk[redo]), axis=1) for Jk in J], axis=0)
            e = np.frexp(np.where(np.isfinite(mx) & (mx > 0), mx, 1.0))[1]
            sig[redo] = np.ldexp(1.0, np.clip(-e, -900, 900))
            A[redo], g[redo] = _lsq.normal([Jk[redo] * sig[redo, None] for Jk in J], r[redo])
        bad = ~(np.all(np.isfinite(A), axis=(1, 2)) & np.all(np.isfinite(g), axis=1))
        return A, g, sig, bad


def _jac(prob: Problem, q: np.ndarray, d: Data, r: np.ndarray | None) -> list[np.ndarray]:
    """J of the residuals; columns of pinned parameters (lower == upper) are zero."""
    J = prob.jac(q, d, r)
    if d.pinned.any():
        J = [np.where(d.pinned[:, k : k + 1], 0.0, Jk) for k, Jk in enumerate(J)]
    return J


def fit_batched(block: FitBlock, setup: EngineSetup) -> BlockResult:
    """Fit every active row of ``block`` as ``setup.fitter`` would, all rows at once.

    Parameters
    ----------
    block : FitBlock
        ``n`` fits sharing ``setup.model``.
    setup : EngineSetup
        Unitless model; fitter of :data:`NONLINEAR_FITTERS` (``LevMarLSQFitter``
        and ``LMLSQFitter`` run MINPACK's algorithm, ``TRFLSQFitter`` and
        ``DogBoxLSQFitter`` scipy's TRF; ``LinearLSQFitter`` dispatches to
        :func:`xarray_modelfit.kernel.linear.fit_linear`); ``fitter_kwargs``
        ``maxiter``, ``acc``, ``epsilon``, ``estimate_jacobian`` with astropy's
        defaults (others are ignored).

    Returns
    -------
    BlockResult
        ``CONVERGED``; ``CONVERGED_WITH_WARNINGS`` (MINPACK's info 6-8, which
        make astropy warn); ``MAX_ITERATIONS`` (parameters kept); ``SINGULAR``
        (non-finite model or Jacobian, as astropy's ``NonFiniteValueError``, or
        Jacobian with dependent normalised columns at the solution: NaN
        parameters); ``FAILED`` (the model raised, message in ``messages``);
        ``SKIPPED_NO_DATA`` / ``SKIPPED_TOO_FEW_POINTS`` for active rows with
        no or fewer valid points than free parameters.
    """
    from astropy.modeling.optimizers import DEFAULT_ACC, DEFAULT_MAXITER

    kind = fitter_kind(setup.fitter)
    if kind == "linear":
        from xarray_modelfit.kernel.linear import fit_linear

        return fit_linear(block, setup)
    if kind is None:
        raise ValueError(batched_support(setup.model, setup.fitter))
    kw = dict(setup.fitter_kwargs or {})
    name = type(setup.fitter).__name__
    minpack = name in ("LevMarLSQFitter", "LMLSQFitter")
    prob = Problem(setup.model, kw, minpack=minpack)
    res = BlockResult.empty(block.n, prob.P, setup.covariance)
    rows = _triage(block, prob.K, res)
    if rows.size == 0:
        return res
    levmar = name == "LevMarLSQFitter"  # scipy.optimize.leastsq's defaults
    opts = {
        "maxfev": int(kw.get("maxiter", DEFAULT_MAXITER)),
        "xtol": float(kw.get("acc", DEFAULT_ACC)),
        "ftol": 1.49012e-8 if levmar else 1e-8,
        "gtol": 0.0 if levmar else 1e-8,
    }
    step = max(1, _CHUNK_ELEMENTS // max(1, block.y.shape[1]))
    ill: list[np.ndarray] = []
    fast = compiled.spec(prob, len(block.x))
    for start in range(0, rows.size, step):  # bounded temporaries, cache-friendly arrays
        data = _block_data(block, rows[start : start + step], prob)
        q0 = np.clip(data.p0[:, prob.free], data.lo, data.hi)
        if fast is not None:
            out = compiled.solve(*fast, prob, data, q0, opts, res.messages)
        elif minpack:
            out = _lsq.minpack(_Evaluator(prob, data), q0, opts, res.messages)
        else:
            nval = data.valid.sum(axis=1)
            out = _lsq.trf(_Evaluator(prob, data), q0, data.lo, data.hi, nval, opts, res.messages)
        if prob.clip:
            out["q"] = np.clip(out["q"], data.lo, data.hi)
        _finalise(prob, data, out, res, weighted=block.weights is not None)
        ill.append(data.rows[_ill_scaled(out["A0"])])
    res.messages.update(prob.failed)
    return _refit_by_loop(block, setup, res, np.concatenate(ill) if ill else rows[:0])


#: the normal equations resolve eigenvalues down to about eps x the largest: a
#: J^T J whose condition number passes this, with correlated columns (a cubic
#: in days since 1800: about 1e32) at the initial values is handed to the fitter
#: itself, whose SVD of J does not square the condition number; a badly scaled
#: but uncorrelated one (a Gaussian on data of 1e30) is solved well here, and so
#: are fits that only become degenerate on the way (a line running off the axis)
_ILL_CONDITIONED = 1e24
_CORRELATED = 10.0


def _ill_scaled(A: np.ndarray) -> np.ndarray:
    """Fits whose ``J^T J`` is too ill-conditioned for the normal equations."""
    if A.shape[0] == 0 or A.shape[1] < 2:
        return np.zeros(A.shape[0], bool)
    K = A.shape[1]
    with np.errstate(all="ignore"):
        d = np.sqrt(np.abs(np.einsum("nkk->nk", A)))
        ok = np.all(np.isfinite(A), axis=(1, 2)) & np.all(d > 0, axis=1)
        A = np.where(ok[:, None, None], A, np.eye(K))
        d = np.where(ok[:, None], d, 1.0)
        C = A / d[:, :, None] / d[:, None, :]
        spread = (d.max(axis=1) / d.min(axis=1)) ** 2
        # only fits that the cheap bound cannot clear need eigenvalues
        bound = _lsq.cond_bound(C)
        check = np.flatnonzero(ok & (bound > _CORRELATED) & (bound * spread > _ILL_CONDITIONED))
        ill = np.zeros(A.shape[0], bool)
        if check.size:
            scaled = compiled.eigh(C[check])[0]
            cond_scaled = scaled[:, -1] / np.abs(scaled[:, 0])
            # the raw condition number, bounded by the scaled one and the spread of the
            # diagonal (eigvalsh of the raw matrix cannot resolve it: that is the problem)
            cond_raw = cond_scaled * spread[check]
            ill[check] = (cond_raw > _ILL_CONDITIONED) & (cond_scaled > _CORRELATED)
    return ill


def _refit_by_loop(block: FitBlock, setup: EngineSetup, res: BlockResult, rows) -> BlockResult:
    """Fits too badly scaled for the batched solver, fitted by astropy's fitter itself."""
    if rows.size == 0:
        return res
    from dataclasses import replace

    from xarray_modelfit.kernel.loop import fit_loop

    sub = replace(block, active=np.isin(np.arange(block.n), rows))
    loop = fit_loop(sub, setup)
    for name in ("params", "stderr", "status", "chi2", "nfev"):
        getattr(res, name)[rows] = getattr(loop, name)[rows]
    if res.covariance is not None:
        res.covariance[rows] = loop.covariance[rows]
    for i in rows.tolist():
        res.messages.pop(i, None)
        if i in loop.messages:
            res.messages[i] = loop.messages[i]
    return res


def _block_data(block: FitBlock, rows: np.ndarray, prob: Problem) -> Data:
    """The arrays of some rows; a free parameter with equal bounds is pinned
    (held at its bound with infinite bounds, as the loop engine fixes it)."""
    valid = block.valid[rows]
    all_valid = bool(valid.all())
    w = None if block.weights is None else block.weights[rows]
    lo, hi = block.lower[rows][:, prob.free], block.upper[rows][:, prob.free]
    pinned = lo == hi
    p0 = block.p0[rows].astype(float)
    p0[:, prob.free] = np.where(pinned, lo, p0[:, prob.free])
    return Data(
        x=tuple(xx if xx.shape[0] == 1 else xx[rows] for xx in block.x),
        y=block.y[rows] if all_valid else np.where(valid, block.y[rows], 0.0),
        valid=valid,
        w=w if w is None or all_valid else np.where(valid, w, 0.0),
        p0=p0,
        lo=np.where(pinned, -np.inf, lo),
        hi=np.where(pinned, np.inf, hi),
        pinned=pinned,
        rows=rows,
        all_valid=all_valid,
    )


def _triage(block: FitBlock, K: int, res: BlockResult) -> np.ndarray:
    """Mark active rows with no / too few valid points; return the rows to fit."""
    rows = np.flatnonzero(block.active)
    nval = block.valid[rows].sum(axis=1)
    res.status[rows[nval == 0]] = Status.SKIPPED_NO_DATA
    res.status[rows[(nval > 0) & (nval < K)]] = Status.SKIPPED_TOO_FEW_POINTS
    return rows[(nval > 0) & (nval >= K)]


def _finalise(prob: Problem, data: Data, out: dict, res: BlockResult, weighted: bool) -> None:
    """Write parameters, chi2, nfev, rank check and covariance of the fitted rows."""
    rows, K, free, status = data.rows, prob.K, prob.free, out["status"]
    res.status[rows] = np.where(status < 0, Status.FAILED, status)
    res.nfev[rows] = out["nfev"]
    usable = (Status.CONVERGED, Status.CONVERGED_WITH_WARNINGS, Status.MAX_ITERATIONS)
    sel = np.flatnonzero(np.isin(status, usable))
    # y only for finite-difference Jacobians (copying it is a pass over the data)
    d, ab = data.take(sel, skip=("y",) if prob.analytic else ()), rows[sel]
    p = prob.full(out["q"][sel], d.p0)
    chi2 = 2 * out["F"][sel]
    nval = d.valid.sum(axis=1)
    cov = np.full((sel.size, K, K), np.nan)
    ok = np.isfinite(chi2)

    def jac(i: np.ndarray) -> list[np.ndarray]:  # J of some of the selected rows
        di, qi = d.take(i), out["q"][sel[i]]
        return _jac(prob, qi, di, None if prob.analytic else prob.resid(qi, di))

    if K and sel.size:
        cov, rank_ok = _lsq.pinv_cov(out["A"][sel], out["sig"][sel], jac, nval, d.pinned)
        if not weighted:
            with np.errstate(all="ignore"):
                cov *= (chi2 / (nval - K))[:, None, None]
        cov[nval <= K] = np.nan  # astropy: no covariance unless N > K
        for i in np.flatnonzero(ok & ~rank_ok):
            res.messages[int(ab[i])] = (
                "the Jacobian is rank-deficient at the solution: "
                "some parameters are not constrained by the data"
            )
        ok &= rank_ok
    res.status[ab[~ok]] = Status.SINGULAR
    res.params[ab[ok]] = p[ok]
    res.chi2[ab[ok]] = chi2[ok]
    st = np.full((sel.size, prob.P), np.nan)
    st[:, free] = np.sqrt(np.einsum("nkk->nk", cov))
    res.stderr[ab[ok]] = st[ok]
    if res.covariance is not None:
        full = np.full((sel.size, prob.P, prob.P), np.nan)
        full[:, free[:, None], free[None, :]] = cov
        res.covariance[ab[ok]] = full[ok]
