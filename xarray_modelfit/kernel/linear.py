"""Batched linear least squares for models linear in their parameters.

For a linear model ``f(x; p) = f(x; 0) + sum_k p_k phi_k(x)`` the design
matrix ``Phi`` is obtained by evaluating the model at unit parameter vectors
(``phi_k = f(x; e_k) - f(x; 0)``). This equals astropy's ``fit_deriv`` design
matrix, including the domain-to-window mapping of polynomials (done by
``evaluate``), and also covers models without ``fit_deriv`` (``Const2D``) and
sums of linear models (which astropy's ``LinearLSQFitter`` refuses).

Every fit ``i`` solves ``min || w_i (Phi_i p - b_i) ||`` over its valid points,
``b_i = y_i - f(x; 0) - Phi_fixed p_fixed``. As in ``LinearLSQFitter`` the
columns are scaled to unit norm and the system is solved through the SVD
(``numpy.linalg.lstsq``'s method, singular values below
``rcond * s_max`` with ``rcond = eps * max(m, K)`` by default treated as zero).
Fits sharing a weighted design matrix (same valid mask and weights; the common
case is one group for the whole block) share one SVD with many right-hand
sides; when most fits differ, one stacked SVD of the per-fit matrices is used.

Covariance: astropy's ``LinearLSQFitter`` gives no ``param_cov`` in
``fit_info``; we return ``(A^T A)^-1`` with ``A`` the weighted design matrix
(the "absolute sigma" convention of the non-linear fitters), scaled by
``chi2 / (N - K)`` when no weights are given and NaN when ``N <= K``.
(``LinearLSQFitter(calc_uncertainties=True)`` scales by ``chi2 / (N - K)``
even with weights.) A rank-deficient design marks the fit ``SINGULAR``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xarray_modelfit.kernel.block import BlockResult, EngineSetup, FitBlock
from xarray_modelfit.kernel.status import Status

__all__ = ["fit_linear", "linear_support"]

_EPS = np.finfo(float).eps


def _leaves(model: Any) -> list[Any]:
    n = getattr(model, "n_submodels", 1)
    return [model[i] for i in range(n)] if n > 1 else [model]


def linear_support(model: Any) -> str | None:
    """Say whether :func:`fit_linear` can fit ``model`` (``None``) or why not.

    Parameters
    ----------
    model : astropy.modeling.Model

    Returns
    -------
    str or None
    """
    from xarray_modelfit.kernel.problem import model_support, probe_params, probe_x

    if not model.linear:
        return f"LinearLSQFitter needs a linear model; {type(model).__name__} is not linear"
    if any(model.tied.values()):
        return "the batched linear path does not support tied parameters"
    if any(b != (None, None) for b in model.bounds.values()):
        return "LinearLSQFitter does not support bounds"
    for leaf in _leaves(model):
        for attr in ("domain", "x_domain", "y_domain"):
            if hasattr(leaf, attr) and getattr(leaf, attr) is None:
                return (
                    f"{type(leaf).__name__}.{attr} is None: LinearLSQFitter sets it from "
                    "each fit's data, which the batched engine does not replicate"
                )
    reason = model_support(model)
    if reason:
        return reason
    # the model must really be f(x; 0) + Phi p
    p = probe_params(model)[0]
    x = probe_x(model)
    try:
        phi, f0 = _design(model, x, np.zeros(len(p)))
        direct = np.broadcast_to(model.evaluate(*x, *p), x[0].shape)[0]
    except Exception as exc:  # noqa: BLE001
        return f"cannot build the design matrix of {type(model).__name__} ({exc})"
    if not np.allclose(f0[0] + np.einsum("km,k->m", phi[:, 0], p), direct, rtol=1e-8, atol=1e-12):
        return f"{type(model).__name__} is not linear in its parameters on a probe"
    return None


def _design(model: Any, x: tuple, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns ``phi_k`` (P, n_x, m) and ``f(x; base)`` (n_x, m) by unit evaluations."""
    shape = np.broadcast_shapes(*(xx.shape for xx in x))
    with np.errstate(all="ignore"):
        f0 = np.broadcast_to(model.evaluate(*x, *base), shape).astype(float)
        phi = np.empty((base.size,) + shape)
        for k in range(base.size):
            e = base.copy()
            e[k] += 1.0
            phi[k] = np.broadcast_to(model.evaluate(*x, *e), shape) - f0
    return phi, f0


def fit_linear(block: FitBlock, setup: EngineSetup) -> BlockResult:
    """Fit every active row of ``block`` with a linear model by batched least squares.

    Parameters
    ----------
    block : FitBlock
    setup : EngineSetup
        ``setup.model`` linear (see :func:`linear_support`); ``fitter_kwargs``
        may hold ``rcond`` (as for ``LinearLSQFitter``).

    Returns
    -------
    BlockResult
        ``CONVERGED`` with ``nfev = 1``; ``SINGULAR`` (NaN parameters) for a
        rank-deficient design; ``SKIPPED_NO_DATA`` / ``SKIPPED_TOO_FEW_POINTS``
        for active rows with no or too few valid points.
    """
    model = setup.model
    if np.any(np.isfinite(block.lower[block.active])) or np.any(
        np.isfinite(block.upper[block.active])
    ):
        raise ValueError("LinearLSQFitter does not support bounds")
    rcond = setup.fitter_kwargs.get("rcond") if setup.fitter_kwargs else None
    names = model.param_names
    P = len(names)
    free = np.flatnonzero([not model.fixed[nm] for nm in names])
    fixed = np.setdiff1d(np.arange(P), free)
    K = free.size
    res = BlockResult.empty(block.n, P, setup.covariance)
    rows = np.flatnonzero(block.active)
    valid = block.valid[rows]
    nval = valid.sum(axis=1)
    res.status[rows[nval == 0]] = Status.SKIPPED_NO_DATA
    res.status[rows[(nval > 0) & (nval < K)]] = Status.SKIPPED_TOO_FEW_POINTS
    keep = (nval > 0) & (nval >= K)
    rows, valid, nval = rows[keep], valid[keep], nval[keep]
    if rows.size == 0:
        return res
    n, m = rows.size, block.y.shape[1]
    x = tuple(xx if xx.shape[0] == 1 else xx[rows] for xx in block.x)
    phi, f0 = _design(model, x, np.zeros(P))  # (P, 1 or n, m), (1 or n, m)
    p0 = block.p0[rows]
    with np.errstate(all="ignore"):
        b = block.y[rows] - f0
        if fixed.size:
            b = b - np.einsum(
                "knm,nk->nm", np.broadcast_to(phi[fixed], (fixed.size, n, m)), p0[:, fixed]
            )
        # weights, zero at invalid points (which removes them)
        w = (
            valid.astype(float)
            if block.weights is None
            else np.where(valid, block.weights[rows], 0.0)
        )
        bw = np.where(valid, b * w, 0.0)
        phi_free = np.where(np.isfinite(phi[free]), phi[free], 0.0)  # (K, 1 or n, m)
    coef, inv_s2, V, rank_ok = _solve(phi_free, w, bw, valid, rcond)
    with np.errstate(all="ignore"):
        model_b = np.einsum("knm,nk->nm", np.broadcast_to(phi_free, (K, n, m)), coef)
        r = bw - w * model_b
        chi2 = np.einsum("nm,nm->n", r, r)
        cov = np.einsum("nik,nk,njk->nij", V, inv_s2, V)
        if block.weights is None:
            cov *= (chi2 / (nval - K))[:, None, None]
    cov[nval <= K] = np.nan
    ok = rank_ok & np.isfinite(chi2) & np.all(np.isfinite(coef), axis=1)
    params = p0.astype(float, copy=True)
    params[:, free] = coef
    st = np.full((n, P), np.nan)
    st[:, free] = np.sqrt(np.einsum("nkk->nk", cov))
    res.status[rows] = np.where(ok, Status.CONVERGED, Status.SINGULAR)
    for i in np.flatnonzero(~ok):
        res.messages[int(rows[i])] = "the design matrix is rank-deficient on the valid points"
    res.params[rows[ok]] = params[ok]
    res.stderr[rows[ok]] = st[ok]
    res.chi2[rows[ok]] = chi2[ok]
    res.nfev[rows] = 1
    if res.covariance is not None:
        full = np.full((n, P, P), np.nan)
        full[:, free[:, None], free[None, :]] = cov
        res.covariance[rows[ok]] = full[ok]
    return res


def _solve(
    phi: np.ndarray, w: np.ndarray, bw: np.ndarray, valid: np.ndarray, rcond: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares coefficients (n, K), ``1/s^2`` (n, K), ``V`` (n, K, K), full-rank flags.

    ``phi`` (K, 1 or n, m) is the design, ``w`` (n, m) the weights (zero at
    invalid points) and ``bw`` (n, m) the weighted right-hand sides.
    """
    K, n = phi.shape[0], bw.shape[0]
    out = (np.empty((n, K)), np.empty((n, K)), np.empty((n, K, K)), np.empty(n, bool))
    if phi.shape[1] == 1:  # shared grid: fits with the same weighted design share one SVD
        groups, inverse = np.unique(np.concatenate([valid, w], axis=1), axis=0, return_inverse=True)
        if len(groups) <= max(8, n // 16):
            for gi in range(len(groups)):
                sel = np.flatnonzero(inverse.ravel() == gi)
                A = (phi[:, 0] * w[sel[0]]).T[None]  # (1, m, K)
                for o, v in zip(out, _svd_solve(A, bw[sel], rcond), strict=True):
                    o[sel] = v
            return out
    A = np.moveaxis(phi * w, 0, -1)  # (n, m, K): one stacked SVD
    for o, v in zip(out, _svd_solve(A, bw, rcond), strict=True):
        o[:] = v
    return out


def _svd_solve(
    A: np.ndarray, b: np.ndarray, rcond: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Solve with column-scaled SVD; ``A`` is (1 or n, m, K) and ``b`` (n, m)."""
    n = b.shape[0]
    K, m = A.shape[2], A.shape[1]
    scl = np.sqrt(np.einsum("imk,imk->ik", A, A))
    scl = np.where(scl > 0, scl, 1.0)
    U, s, Vt = np.linalg.svd(A / scl[:, None, :], full_matrices=False)  # U (i, m, K)
    cut = (_EPS * max(m, K) if rcond is None else rcond) * s[:, :1]
    keep = s > cut
    with np.errstate(all="ignore"):
        sinv = np.where(keep, 1.0 / np.where(keep, s, 1.0), 0.0)
    ub = np.einsum("imk,nm->nk", U, b) if U.shape[0] == 1 else np.einsum("nmk,nm->nk", U, b)
    Vs = np.swapaxes(Vt, 1, 2) / scl[:, :, None]  # unscaled V: columns of scl^-1 V
    coef = (
        np.einsum("ijk,nk->nj", Vs, sinv * ub)
        if Vs.shape[0] == 1
        else np.einsum("njk,nk->nj", Vs, sinv * ub)
    )
    full = np.broadcast_to(keep.all(axis=1) & (s[:, 0] > 0), (n,))
    return coef, np.broadcast_to(sinv**2, (n, K)), np.broadcast_to(Vs, (n, K, K)), full
