"""Numerics of the batched engine: scipy's TRF and MINPACK's LM over a batch axis.

Both solvers advance every fit of a batch by one trial step per round through
numpy operations over a leading axis of length ``n`` (each fit keeps its own
state, and finished fits leave the working arrays), and follow their
reference implementation step by step, so that a fit lands where astropy's
fitter lands:

* :func:`trf` is ``scipy.optimize.least_squares(method="trf")`` with the
  default ``x_scale=1`` and the ``exact`` trust-region solver
  (``scipy/optimize/_lsq/trf.py``): Moré's safeguarded Newton iteration on the
  Levenberg-Marquardt parameter, kept from one step to the next; trust radius
  ``Delta0 = ||x0 / v**0.5||``; with bounds, Coleman-Li scaling ``v``, the
  choice between the step cut back at ``theta = max(0.995, 1 - ||g v||)`` of
  the way to a bound, its reflection and the scaled anti-gradient
  (``select_step``), and strictly feasible iterates; a step is accepted when
  it lowers the cost at all; termination by ``check_termination`` (``ftol``,
  ``xtol``) and ``||g v||_inf < gtol``.
* :func:`minpack` is MINPACK's ``lmder`` as called by ``scipy.optimize.leastsq``
  (``LevMarLSQFitter``) and ``least_squares(method="lm")`` (``LMLSQFitter``):
  scaling by the running maximum of the Jacobian's column norms, initial step
  bound ``factor * ||D x0||`` with ``factor = 100``, ``lmpar``'s iteration on
  the LM parameter (10% tolerance), MINPACK's step-bound update and its
  acceptance test ``ratio >= 1e-4``; info 1-4 are convergence, 5 the
  evaluation limit, 6-8 (tolerances too small) convergence with a warning.

The least-squares subproblems use a batched solve for the Gauss-Newton step
(the usual case) and otherwise the eigen-decomposition of the (scaled)
``J^T J`` in place of an SVD / QR of ``J``. Where ``J^T J`` would under- or
overflow (a Gaussian 30 sigma away from the data), J comes scaled by a power
of two ``sig`` per fit and MINPACK's step is solved in rescaled units, as
MINPACK's own QR-based arithmetic never squares J.

The residual side is an object ``ev`` with ``resid(q)`` (``(n, m)`` residuals
of the running fits, NaN where the model is non-finite), ``normal(q, r, idx)``
(``(sig J)^T (sig J)``, ``(sig J)^T r``, ``sig`` at rows ``idx`` and a mask of
rows where they are non-finite), ``failed()`` (mask of fits whose model
raised), ``take(keep)`` (drop finished fits), ``rows`` (block rows of the
running fits, for messages) and ``pinned`` (``(n, K)`` components held still).
Also :func:`normal` and :func:`pinv_cov` (covariance and rank rule at the
solution).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from xarray_modelfit.kernel import compiled
from xarray_modelfit.kernel.status import Status

EPS = np.finfo(float).eps
_DWARF = np.finfo(float).tiny
_RANK_TOL = 10 * EPS  # eigenvalues of J^T J below this x the largest: numerically zero


class _State:
    """Per-fit arrays of the running fits; ``take`` keeps some rows of each."""

    def __init__(self, **arrays: np.ndarray):
        self.__dict__.update(arrays)

    def take(self, keep: np.ndarray) -> None:
        for name, value in list(self.__dict__.items()):
            setattr(self, name, value[keep])


def _norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("nk,nk->n", a, a))


def _quad(B: np.ndarray, s: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """``s^T B t`` per row (``t = s`` by default)."""
    return np.einsum("nk,nkj,nj->n", s, B, s if t is None else t)


def _gauss_newton(B: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``-B^-1 g`` per row, NaN where ``B`` is singular."""
    K = B.shape[1]
    dg = np.einsum("nkk->nk", B)
    ok = np.all((dg > 0) & np.isfinite(dg), axis=1) & np.all(np.isfinite(g), axis=1)
    if not ok.all():  # a zero column (a model far from the data): no Gauss-Newton step
        B = np.where(ok[:, None, None], B, np.eye(K))
    p = _solve(B, g)
    p[~ok] = np.nan
    return p


def _solve(B: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``-B^-1 g``; exactly singular rows NaN, found by bisection (a row's result
    never depends on the other rows)."""
    try:
        return -np.linalg.solve(B, g[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        if len(B) == 1:
            return np.full_like(g, np.nan)
        h = len(B) // 2
        return np.concatenate([_solve(B[:h], g[:h]), _solve(B[h:], g[h:])])


def _wsum(y: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``sum(y**2 / den)`` per row: ``u^T (B + par I)^-1 u`` for unit ``u`` in the eigenbasis."""
    return np.sum(y * y / den, axis=1)


def _eig(B: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues ``s2 >= 0`` (ascending), vectors ``V`` and ``V^T g``."""
    s2, V = compiled.eigh(B)
    return np.maximum(s2, 0.0), V, np.einsum("nkj,nk->nj", V, g)


# --------------------------------------------------------------------------- scipy TRF
def _more_scipy(
    B: np.ndarray, g: np.ndarray, delta: np.ndarray, alpha: np.ndarray, mrows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """scipy's ``solve_lsq_trust_region``: ``min 1/2 p^T B p + g^T p``, ``||p|| <= delta``.

    Returns the step and the LM parameter (0 for a Gauss-Newton step).
    """
    p = _gauss_newton(B, g)
    with np.errstate(all="ignore"):
        done = np.all(np.isfinite(p), axis=1) & (_norm(p) <= delta)
    alpha = np.where(done, 0.0, alpha)
    rest = np.flatnonzero(~done)
    if rest.size == 0:
        return p, alpha
    s2, V, suf = _eig(B[rest], g[rest])
    d, a = delta[rest], alpha[rest]
    with np.errstate(all="ignore"):
        full = (mrows[rest] >= B.shape[1]) & (s2[:, 0] > _RANK_TOL * s2[:, -1])
        pgn = -np.einsum("nkj,nj->nk", V, suf / s2)
        gn = full & (_norm(pgn) <= d)

        def phi(al: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            den = s2 + al[:, None]
            y = suf / den
            pn = _norm(y)
            return pn - d, -pn * _wsum(y / pn[:, None], den)

        upper = _norm(suf) / d
        f0, fp0 = phi(np.zeros(len(d)))
        lower = np.where(full, -f0 / fp0, 0.0)
        reset = lambda: np.maximum(1e-3 * upper, np.sqrt(lower * upper))  # noqa: E731
        a = np.where(~full & (a == 0), reset(), a)
        run = ~gn
        for _ in range(10):  # each fit stops on its own, as in scipy
            a = np.where(run & ((a < lower) | (a > upper)), reset(), a)
            f, fp = phi(a)
            upper = np.where(run & (f < 0), a, upper)
            ratio = f / fp
            lower = np.where(run, np.maximum(lower, a - ratio), lower)
            a = np.where(run, a - (f + d) * ratio / d, a)
            run &= ~(np.abs(f) < 0.01 * d)
            if not run.any():
                break
        pt = -np.einsum("nkj,nj->nk", V, suf / (s2 + a[:, None]))
        pt *= (d / _norm(pt))[:, None]  # onto the boundary, as scipy
        p[rest] = np.where(gn[:, None], pgn, pt)
        alpha[rest] = np.where(gn, 0.0, a)
    p[~np.isfinite(p)] = 0.0
    return p, alpha


def _cl_scaling(q, g, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """Coleman-Li scaling vector ``v`` and its derivative ``dv`` (scipy's ``CL_scaling_vector``)."""
    up = (g < 0) & np.isfinite(hi)
    dn = (g > 0) & np.isfinite(lo)
    with np.errstate(invalid="ignore"):
        v = np.where(up, hi - q, np.where(dn, q - lo, 1.0))
    return v, np.where(up, -1.0, np.where(dn, 1.0, 0.0))


def _to_bound(q, s, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    """scipy's ``step_size_to_bound``: smallest ``t >= 0`` with ``q + t s`` on a bound."""
    with np.errstate(all="ignore"):
        t = np.where(s != 0, np.maximum((lo - q) / s, (hi - q) / s), np.inf)
    tmin = t.min(axis=1)
    return tmin, (t == tmin[:, None]) * np.sign(s)


def _min_quad_1d(a, b, lo, hi, c=0.0) -> tuple[np.ndarray, np.ndarray]:
    """scipy's ``minimize_quadratic_1d``: min of ``a t^2 + b t + c`` on ``[lo, hi]``."""
    with np.errstate(all="ignore"):
        ext = -0.5 * b / a
    ext_ok = (a != 0) & (lo < ext) & (ext < hi)
    t = np.stack([lo, hi, np.where(ext_ok, ext, np.nan)], axis=1)
    y = t * (a[:, None] * t + b[:, None]) + np.broadcast_to(c, lo.shape)[:, None]
    y = np.where(np.isnan(y), np.inf, y)
    k = np.argmin(y, axis=1)
    idx = np.arange(len(a))
    return t[idx, k], y[idx, k]


def _select_step(q, B, g_h, p_h, d, delta, lo, hi, theta):
    """scipy's TRF ``select_step`` for rows whose step leaves the box.

    Returns the step, the step in the scaled variables and the predicted reduction.
    """
    p = d * p_h
    p_stride, hits = _to_bound(q, p, lo, hi)
    r_h = np.where(hits != 0, -p_h, p_h)
    r = d * r_h
    p, p_h = p * p_stride[:, None], p_h * p_stride[:, None]
    with np.errstate(all="ignore"):
        # reflected direction: first the trust-region boundary or a bound
        a_, b_ = np.einsum("nk,nk->n", r_h, r_h), np.einsum("nk,nk->n", p_h, r_h)
        c_ = np.einsum("nk,nk->n", p_h, p_h) - delta**2
        qq = -(b_ + np.copysign(np.sqrt(b_ * b_ - a_ * c_), b_))
        to_tr = np.maximum(qq / a_, c_ / qq)
        to_bound, _ = _to_bound(q + p, r, lo, hi)
        r_stride = np.minimum(to_bound, to_tr)
        pos = r_stride > 0
        r_lo = np.where(pos, (1 - theta) * p_stride / r_stride, 0.0)
        r_hi = np.where(pos, np.where(r_stride == to_bound, theta * to_bound, to_tr), -1.0)
        ok = r_lo <= r_hi
        Br = np.einsum("nkj,nj->nk", B, r_h)
        a1 = 0.5 * np.einsum("nk,nk->n", r_h, Br)
        b1 = np.einsum("nk,nk->n", g_h, r_h) + np.einsum("nk,nk->n", p_h, Br)
        c1 = 0.5 * _quad(B, p_h) + np.einsum("nk,nk->n", g_h, p_h)
        t, r_val = _min_quad_1d(a1, b1, np.where(ok, r_lo, 0.0), np.where(ok, r_hi, 0.0), c1)
        r_h = r_h * t[:, None] + p_h
        r_val = np.where(ok & np.isfinite(r_val), r_val, np.inf)
        # the cut-back step
        p, p_h = p * theta[:, None], p_h * theta[:, None]
        p_val = 0.5 * _quad(B, p_h) + np.einsum("nk,nk->n", g_h, p_h)
        # the anti-gradient
        ag_h = -g_h
        to_tr = delta / _norm(ag_h)
        to_bound, _ = _to_bound(q, d * ag_h, lo, hi)
        stride = np.where(to_bound < to_tr, theta * to_bound, to_tr)
        a2, b2 = 0.5 * _quad(B, ag_h), np.einsum("nk,nk->n", g_h, ag_h)
        t2, ag_val = _min_quad_1d(a2, b2, np.zeros_like(stride), stride)
        ag_h = ag_h * t2[:, None]
    use_p = (p_val < r_val) & (p_val < ag_val)
    use_r = ~use_p & (r_val < p_val) & (r_val < ag_val)
    step_h = np.where(use_p[:, None], p_h, np.where(use_r[:, None], r_h, ag_h))
    pred = -np.where(use_p, p_val, np.where(use_r, r_val, ag_val))
    step_h = np.where(np.isfinite(step_h), step_h, 0.0)
    return d * step_h, step_h, pred


def _strictly_feasible(q, lo, hi, rstep: float) -> np.ndarray:
    """scipy's ``make_strictly_feasible`` (``rstep=0``: the next float inside)."""
    with np.errstate(invalid="ignore"):
        return _feasible(q, lo, hi, rstep)


def _feasible(q, lo, hi, rstep: float) -> np.ndarray:
    if rstep == 0:
        out = np.where(q <= lo, np.nextafter(lo, hi), q)
        out = np.where(q >= hi, np.nextafter(hi, lo), out)
    else:
        ld, ud = q - lo, hi - q
        low = np.isfinite(lo) & (ld <= np.minimum(ud, rstep * np.maximum(1, np.abs(lo))))
        upp = np.isfinite(hi) & (ud <= np.minimum(ld, rstep * np.maximum(1, np.abs(hi))))
        out = np.where(low, lo + rstep * np.maximum(1, np.abs(lo)), q)
        out = np.where(upp, hi - rstep * np.maximum(1, np.abs(hi)), out)
    tight = (out < lo) | (out > hi)
    return np.where(tight, 0.5 * (lo + hi), out)


def _start(ev: Any, q0: np.ndarray, messages: dict[int, str]) -> _State:
    """Common initial state: residuals, cost, normal equations at ``q0``."""
    n, K = q0.shape
    r = ev.resid(q0)
    F = 0.5 * np.einsum("nm,nm->n", r, r)
    code = np.where(np.isfinite(F), -1, int(Status.SINGULAR))
    for i in np.flatnonzero(code >= 0):
        messages[int(ev.rows[i])] = "the model is non-finite at the initial parameters"
    s = _State(pos=np.arange(n), q=q0.copy(), r=r, F=F, A=np.zeros((n, K, K)),
               g=np.zeros((n, K)), sig=np.ones(n), nfev=np.ones(n, np.int64), code=code)  # fmt: skip
    _jacobian(ev, s, np.flatnonzero(code < 0), messages)
    return s


def _jacobian(ev: Any, s: _State, idx: np.ndarray, messages: dict[int, str]) -> None:
    """``A = J^T J`` and ``g = J^T r`` at rows ``idx``; non-finite ones: SINGULAR."""
    if idx.size == 0:
        return
    A, g, sig, bad = ev.normal(s.q[idx], s.r[idx], idx)
    for i in np.flatnonzero(bad):
        messages.setdefault(int(ev.rows[idx[i]]), "the Jacobian is non-finite")
    s.code[idx[bad]] = Status.SINGULAR
    A[bad], g[bad] = 0.0, 0.0
    s.A[idx], s.g[idx], s.sig[idx] = A, g, sig


def _retire(ev: Any, s: _State, out: dict[str, np.ndarray]) -> bool:
    """Move finished fits to ``out``; True when none is left."""
    s.code[ev.failed()] = Status.FAILED  # the model raised (message kept by ``ev``)
    done = s.code >= 0
    if done.any():
        for key in ("q", "nfev", "F", "A", "sig"):
            out[key][s.pos[done]] = getattr(s, key)[done]
        out["status"][s.pos[done]] = s.code[done]
        s.take(~done)
        ev.take(~done)
    return s.pos.size == 0


def _outputs(n: int, K: int, q0: np.ndarray) -> dict[str, np.ndarray]:
    return {"q": q0.copy(), "status": np.full(n, -1), "nfev": np.ones(n, np.int64),
            "F": np.full(n, np.nan), "A": np.zeros((n, K, K)), "sig": np.ones(n)}  # fmt: skip


def _trial(ev: Any, s: _State, qn: np.ndarray, messages: dict[int, str]):
    """Residuals and cost at the trial points; non-finite ones end the fit (SINGULAR),
    as astropy's objective function raises ``NonFiniteValueError`` there."""
    rn = ev.resid(qn)
    s.nfev += 1
    Fn = 0.5 * np.einsum("nm,nm->n", rn, rn)
    fin = np.isfinite(Fn)
    for i in np.flatnonzero(~fin):
        messages.setdefault(int(ev.rows[i]), "the model became non-finite during the fit")
    s.code[~fin] = Status.SINGULAR
    return rn, Fn, fin


def trf(
    ev: Any, q0: np.ndarray, lo: np.ndarray, hi: np.ndarray, nval: np.ndarray,
    opts: dict[str, Any], messages: dict[int, str],
) -> dict[str, np.ndarray]:  # fmt: skip
    """Batched scipy TRF; per fit: q, status, nfev, cost F and ``J^T J`` at q."""
    n, K = q0.shape
    out = _outputs(n, K, q0)
    ftol, xtol, gtol, maxfev = opts["ftol"], opts["xtol"], opts["gtol"], opts["maxfev"]
    q0 = _strictly_feasible(q0, lo, hi, 1e-10)
    s = _start(ev, q0, messages)
    out["A0"] = s.A.copy()  # J^T J at the start, for the caller's conditioning check
    s.lo, s.hi, s.pin = lo, hi, ev.pinned
    bounded = np.any((np.isfinite(lo) | np.isfinite(hi)) & ~s.pin, axis=1)
    s.mrows = nval + np.where(bounded, K, 0)
    v, _ = _cl_scaling(s.q, s.g / s.sig[:, None], lo, hi)
    s.delta = _norm(np.where(s.pin, 0.0, s.q / np.sqrt(v)))
    s.delta[~(s.delta > 0) | ~np.isfinite(s.delta)] = 1.0
    s.alpha = np.zeros(n)
    while True:
        g = s.g / s.sig[:, None]  # J scaled by sig in ev.normal: scipy's J and g here
        v, dv = _cl_scaling(s.q, g, s.lo, s.hi)
        gnorm = np.max(np.abs(g * v), axis=1, initial=0.0)
        s.code[(s.code < 0) & (gnorm < gtol)] = Status.CONVERGED
        s.code[(s.code < 0) & (s.nfev >= maxfev)] = Status.MAX_ITERATIONS
        keep = s.code < 0
        if _retire(ev, s, out):
            return out
        v, dv, gnorm, g = v[keep], dv[keep], gnorm[keep], g[keep]
        d = np.sqrt(v)
        ds = d / s.sig[:, None]
        B = s.A * ds[:, :, None] * ds[:, None, :]
        diag_h = g * dv
        B[:, np.arange(K), np.arange(K)] += diag_h
        g_h = d * g
        theta = np.maximum(0.995, 1 - gnorm)
        p_h, alpha = _more_scipy(B, g_h, s.delta, s.alpha, s.mrows)
        step, step_h = d * p_h, p_h
        with np.errstate(all="ignore"):
            pred = -(0.5 * _quad(B, p_h) + np.einsum("nk,nk->n", g_h, p_h))
        i = np.flatnonzero(np.any((s.q + step < s.lo) | (s.q + step > s.hi), axis=1))
        if i.size:
            step[i], step_h[i], pred[i] = _select_step(
                s.q[i], B[i], g_h[i], p_h[i], d[i], s.delta[i], s.lo[i], s.hi[i], theta[i]
            )
        qn = _strictly_feasible(s.q + step, s.lo, s.hi, 0)
        rn, Fn, fin = _trial(ev, s, qn, messages)
        hn = _norm(step_h)
        with np.errstate(all="ignore"):
            ared = s.F - Fn
            ratio = np.where(pred > 0, ared / pred, np.where((pred == 0) & (ared == 0), 1.0, 0.0))
            new = np.where(ratio < 0.25, 0.25 * hn, s.delta)
            new = np.where((ratio > 0.75) & (hn > 0.95 * s.delta), 2 * s.delta, new)
            qnorm = _norm(np.where(s.pin, 0.0, s.q))
            stop = ((ared < ftol * s.F) & (ratio > 0.25)) | (_norm(step) < xtol * (xtol + qnorm))
            s.alpha = np.where(stop, alpha, alpha * s.delta / new)
        s.delta = np.where(stop, s.delta, new)
        s.code[fin & stop & (s.code < 0)] = Status.CONVERGED
        _accept(ev, s, fin & (ared > 0), qn, rn, Fn, messages)


def _accept(ev, s, acc, qn, rn, Fn, messages) -> None:
    """Take the accepted trial points and recompute J there (also for fits that
    just converged: their covariance needs it)."""
    s.q[acc], s.F[acc] = qn[acc], Fn[acc]
    rej = np.flatnonzero(~acc)
    if rej.size < 0.5 * acc.size:  # rn is a fresh array: keep it, with the rejected rows back
        rn[rej] = s.r[rej]
        s.r = rn
    else:
        s.r[acc] = rn[acc]
    _jacobian(ev, s, np.flatnonzero(acc & (s.code <= Status.MAX_ITERATIONS)), messages)


# --------------------------------------------------------------------------- MINPACK
def _lmpar(
    Bs: np.ndarray, gs: np.ndarray, delta: np.ndarray, par: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """MINPACK's ``lmpar`` in the scaled variables ``u = D p``: step ``u`` and LM parameter."""
    u = _gauss_newton(Bs, gs)
    with np.errstate(all="ignore"):
        done = np.all(np.isfinite(u), axis=1) & (_norm(u) - delta <= 0.1 * delta)
    par = np.where(done, 0.0, par)
    rest = np.flatnonzero(~done)
    if rest.size == 0:
        return u, par
    s2, V, suf = _eig(Bs[rest], gs[rest])
    d, p = delta[rest], par[rest]
    with np.errstate(all="ignore"):
        full = s2[:, 0] > _RANK_TOL * s2[:, -1]
        keep = s2 > _RANK_TOL * s2[:, -1:]
        ugn = -np.einsum("nkj,nj->nk", V, np.where(keep, suf / s2, 0.0))
        dx = _norm(ugn)
        fp = dx - d
        gn = fp <= 0.1 * d
        parl = (fp / d) / _wsum(suf / s2 / dx[:, None], s2)
        parl = np.where(full & np.isfinite(parl), parl, 0.0)
        gnorm = _norm(suf)
        paru = gnorm / d
        paru = np.where(paru == 0, _DWARF / np.minimum(d, 0.1), paru)
        p = np.minimum(np.maximum(p, parl), paru)
        p = np.where(p == 0, gnorm / dx, p)
        p = np.where(np.isfinite(p), p, 0.0)
        run = ~gn
        ut = ugn.copy()
        for it in range(1, 11):
            p = np.where(run & (p == 0), np.maximum(_DWARF, 1e-3 * paru), p)
            den = s2 + p[:, None]
            uu = -np.einsum("nkj,nj->nk", V, suf / den)
            ut = np.where(run[:, None], uu, ut)
            dxn = _norm(uu)
            temp, fp = fp, np.where(run, dxn - d, fp)
            stop = (np.abs(fp) <= 0.1 * d) | ((parl == 0) & (fp <= temp) & (temp < 0)) | (it == 10)
            run &= ~stop
            if not run.any():
                break
            parc = (fp / d) / _wsum(suf / den / dxn[:, None], den)
            parl = np.where(run & (fp > 0), np.maximum(parl, p), parl)
            paru = np.where(run & (fp < 0), np.minimum(paru, p), paru)
            p = np.where(run, np.maximum(parl, p + parc), p)
        u[rest] = np.where(gn[:, None], ugn, ut)
        par[rest] = np.where(gn, 0.0, p)
    u[~np.isfinite(u)] = 0.0
    return u, par


def minpack(
    ev: Any, q0: np.ndarray, opts: dict[str, Any], messages: dict[int, str]
) -> dict[str, np.ndarray]:
    """Batched MINPACK ``lmder`` (mode 1, factor 100); outputs as :func:`trf`."""
    n, K = q0.shape
    out = _outputs(n, K, q0)
    ftol, xtol, gtol, maxfev = opts["ftol"], opts["xtol"], opts["gtol"], opts["maxfev"]
    s = _start(ev, q0, messages)
    out["A0"] = s.A.copy()  # J^T J at the start, for the caller's conditioning check
    cn = np.sqrt(np.einsum("nkk->nk", s.A)) / s.sig[:, None]
    s.diag = np.where(cn > 0, cn, 1.0)
    s.free = ~ev.pinned
    s.xnorm = _norm(s.diag * s.q * s.free)
    s.delta = np.where(s.xnorm > 0, 100.0 * s.xnorm, 100.0)
    s.par, s.first = np.zeros(n), np.ones(n, bool)
    s.fnorm = np.sqrt(2 * s.F)
    s.fresh = np.ones(n, bool)  # J was just computed: outer-loop tests
    s.gnorm = np.zeros(n)
    while True:
        f = np.flatnonzero(s.fresh & (s.code < 0))
        if f.size:
            cn = np.sqrt(np.einsum("nkk->nk", s.A[f]))  # column norms of sig J
            with np.errstate(all="ignore"):
                cos = np.abs(s.g[f]) / (cn * s.fnorm[f, None])
            gn = np.max(np.where(cn > 0, cos, 0.0), axis=1, initial=0.0)
            s.gnorm[f] = np.where(s.fnorm[f] == 0, 0.0, gn)
            s.code[f[s.gnorm[f] <= gtol]] = Status.CONVERGED
            s.diag[f] = np.maximum(s.diag[f], cn / s.sig[f, None])
            s.fresh[:] = False
        if _retire(ev, s, out):
            return out
        # lmpar on (B + tau par_t I) u = -tau g_t with B = (sig J / D)^T (sig J / D),
        # sig g / D = tau g_t, par = tau par_t / sig^2: tau, sig powers of two
        D, sig = s.diag, s.sig
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            gs = sig[:, None] * (s.g / D)
            mx = np.max(np.abs(gs), axis=1, initial=0.0)
            tau = np.ldexp(1.0, np.frexp(np.where(mx > 0, mx, 1.0))[1])
            B = s.A / (D[:, :, None] * D[:, None, :]) / tau[:, None, None]
            gt = gs / tau[:, None]
            paru = _norm(gt) / s.delta  # lmpar clips par to paru: before scaling
            r = tau / sig
            par = np.where(s.par > paru * r / sig, paru, s.par * sig / r)
        u, par = _lmpar(B, gt, s.delta, par)
        s.par = par * r / sig
        step = u / D
        pnorm = _norm(u)
        s.delta = np.where(s.first, np.minimum(s.delta, pnorm), s.delta)
        qn = s.q + step
        rn, Fn, fin = _trial(ev, s, qn, messages)
        fnorm1 = np.sqrt(2 * Fn)
        with np.errstate(all="ignore"):
            actred = np.where(0.1 * fnorm1 < s.fnorm, 1 - (fnorm1 / s.fnorm) ** 2, -1.0)
            t1 = _quad(s.A, step) / sig / sig / s.fnorm**2
            t2 = s.par * pnorm**2 / s.fnorm**2
            prered, dirder = t1 + 2 * t2, -(t1 + t2)
            ratio = np.where(prered != 0, actred / prered, 0.0)
            temp = np.where(actred >= 0, 0.5, 0.5 * dirder / (dirder + 0.5 * actred))
            temp = np.where((0.1 * fnorm1 >= s.fnorm) | (temp < 0.1), 0.1, temp)
            low = ratio <= 0.25
            grow = ~low & ((s.par == 0) | (ratio >= 0.75))
            s.delta = np.where(low, temp * np.minimum(s.delta, pnorm / 0.1), s.delta)
            s.delta = np.where(grow, pnorm / 0.5, s.delta)
            s.par = np.where(low, s.par / temp, np.where(grow, 0.5 * s.par, s.par))
        acc = fin & (ratio >= 1e-4)
        s.xnorm = np.where(acc, _norm(D * qn * s.free), s.xnorm)
        s.fnorm = np.where(acc, fnorm1, s.fnorm)
        s.first &= ~acc
        small = (np.abs(actred) <= ftol) & (prered <= ftol) & (0.5 * ratio <= 1)
        conv = fin & (small | (s.delta <= xtol * s.xnorm))
        warn = (np.abs(actred) <= EPS) & (prered <= EPS) & (0.5 * ratio <= 1)
        warn |= (s.delta <= EPS * s.xnorm) | (s.gnorm <= EPS)
        run = s.code < 0
        s.code[run & conv] = Status.CONVERGED
        s.code[run & ~conv & (s.nfev >= maxfev)] = Status.MAX_ITERATIONS
        w = run & ~conv & (s.nfev < maxfev) & warn & fin
        s.code[w] = Status.CONVERGED_WITH_WARNINGS
        for i in np.flatnonzero(w):
            messages[int(ev.rows[i])] = (
                "MINPACK: the tolerances are too small, no further improvement is possible"
            )
        s.fresh = acc
        _accept(ev, s, acc, qn, rn, Fn, messages)


# --------------------------------------------------------------------------- at the solution
def normal(J: list[np.ndarray], r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``J^T J`` (n, K, K) and ``J^T r`` (n, K) from K arrays of shape (n, m)."""
    K = len(J)
    A = np.empty((r.shape[0], K, K))
    for i in range(K):
        for j in range(i + 1):
            A[:, i, j] = A[:, j, i] = np.einsum("nm,nm->n", J[i], J[j])
    g = np.stack([np.einsum("nm,nm->n", Jk, r) for Jk in J], axis=1) if K else A.sum(axis=2)
    return A, g


def cond_bound(C: np.ndarray) -> np.ndarray:
    """An upper bound of the condition number of each unit-diagonal positive
    semi-definite matrix of ``C`` (n, K, K): its eigenvalues sum to K, so
    ``cond <= K^K / det``; doubled for rounding, inf where ``det <= 0``."""
    K = C.shape[1]
    with np.errstate(all="ignore"):
        det = np.linalg.det(C) if K else np.ones(C.shape[0])
        return np.where(det > 0, 2.0 * float(K) ** K / det, np.inf)


def pinv_cov(
    A: np.ndarray, sig: np.ndarray, jac: Any, nval: np.ndarray, pinned: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``pinv(J^T J)`` and full-rank flags, both on normalised columns of J.

    The rule of the loop engine (:func:`xarray_modelfit.kernel.loop.rank_deficient`):
    J has full rank unless a column is zero or the singular values of J with
    unit columns fall below ``eps * max(m, K) * s[0]``; the pseudo-inverse drops
    those singular values (astropy's rule, made independent of the parameters'
    scale). Rows with ``cond < 1e4`` use the eigen-decomposition of the
    normalised ``J^T J``; the others the SVD of J, fit by fit. Pinned
    parameters get NaN rows and columns. ``A`` is ``(sig J)^T (sig J)``.
    """
    n, K = A.shape[:2]
    nrm = np.sqrt(np.einsum("nkk->nk", A)) / sig[:, None]
    unit = np.where(pinned, 1.0, nrm)
    zero = ~(unit > 0) | ~np.isfinite(unit)
    N = np.where(zero, 1.0, unit)
    Ns = N * sig[:, None]
    C = A / (Ns[:, :, None] * Ns[:, None, :])
    C[:, np.arange(K), np.arange(K)] = 1.0
    C = np.where(pinned[:, :, None] | pinned[:, None, :], np.eye(K), C)
    with np.errstate(all="ignore"):
        # where the bound is below 1e8 the inverse is the pseudo-inverse: no eigenvalues
        sure = (cond_bound(C) < 1e8) & ~zero.any(axis=1)
        cov = np.empty((n, K, K))
        cov[sure] = compiled.inv(C[sure])
        easy = sure.copy()
        rest = np.flatnonzero(~sure)
        lam, V = compiled.eigh(C[rest])
        easy[rest] = (lam[:, 0] > 1e-8 * lam[:, -1]) & ~zero[rest].any(axis=1)
        cov[rest] = (V / lam[:, None, :]) @ V.transpose(0, 2, 1)
        cov /= N[:, :, None] * N[:, None, :]
    rank_ok = easy.copy()
    hard = np.flatnonzero(~easy)
    if hard.size:
        Jh = np.stack(jac(hard), axis=-1)
        for i, h in enumerate(hard):
            cols = np.flatnonzero(~pinned[h])
            Jr = Jh[i][:, cols]
            norms = np.linalg.norm(Jr, axis=0)
            cov[h] = np.nan
            if not (np.all(np.isfinite(Jr)) and np.all(norms > 0)):
                continue
            _, sv, Vt = np.linalg.svd(Jr / norms, full_matrices=False)
            keep = sv > EPS * max(nval[h], cols.size) * sv[0]
            rank_ok[h] = bool(keep.all())
            Vk = Vt[keep].T / norms[:, None]
            cov[h][np.ix_(cols, cols)] = (Vk / sv[keep] ** 2) @ Vk.T
    cov[np.broadcast_to(pinned[:, :, None] | pinned[:, None, :], cov.shape)] = np.nan
    return cov, rank_ok
