"""numba kernels of :mod:`xarray_modelfit.kernel.compiled` (imported on first use).

Every function mirrors its namesake in :mod:`xarray_modelfit.kernel._lsq` for
one fit; ``np.maximum`` / ``np.minimum`` there propagate NaN, and so do
:func:`_max` / :func:`_min` here. ``error_model="numpy"``: division by zero
gives inf or NaN, as numpy with ``errstate(all="ignore")``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: no reference counting (numba's NRT): nothing here allocates (the workspaces come
#: from Python), and counting every array argument and view was half of the time
_jit = njit(cache=True, nogil=True, error_model="numpy", _nrt=False)
#: loops over the points: reassociated sums and fused multiply-adds let them use SIMD
#: (the last bits change, as with numpy's own pairwise sums)
_sum = njit(
    cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"}, _nrt=False
)

_RUNNING, _CONVERGED, _CONVERGED_WITH_WARNINGS, _MAX_ITERATIONS, _SINGULAR = -1, 0, 1, 2, 3
_EPS = float(np.finfo(float).eps)
_RANK_TOL = 10 * _EPS
_DWARF = float(np.finfo(float).tiny)
_DWARF_ROT = 1e-3 * _EPS * _EPS  # off-diagonal entries below this x max |B|: zero
_NAN, _INF = math.nan, math.inf
# Subnormal numbers cost some hundred cycles an operation: the far wings of a
# narrow line would make them a spectrum's main cost. Model values ``exp(t)``
# below the smallest normal number are taken as 0, and Jacobian entries whose
# products would be subnormal (below ``sqrt(tiny)``) are 0 in ``J^T J``: changes
# below 1e-150 of the normal equations' entries. Where some column of J is that
# small in all (a line far from every point), :func:`_eval` evaluates the model
# again with nothing flushed and rescales J by ``sig``, as the numpy solver does.
_TINY = float(np.finfo(float).tiny)
_LOG_TINY = math.log(_TINY)
_EXP_ZERO = -745.2  # exp(t) == 0.0 in double precision for every t below
_TINY_J = math.sqrt(_TINY)
#: small helpers inlined into their callers (no call or reference-counting cost)
_inline = njit(cache=True, nogil=True, error_model="numpy", inline="always", _nrt=False)


@_inline
def _max(a, b):
    if a != a or b != b:
        return _NAN
    return a if a >= b else b


@_inline
def _min(a, b):
    if a != a or b != b:
        return _NAN
    return a if a <= b else b


@_inline
def _dot(a, b):
    s = 0.0
    for k in range(a.size):
        s += a[k] * b[k]
    return s


@_inline
def _quad(B, s, t):
    """``s^T B t``."""
    out = 0.0
    for i in range(s.size):
        acc = 0.0
        for j in range(t.size):
            acc += B[i, j] * t[j]
        out += s[i] * acc
    return out


# --------------------------------------------------------------------------- model
@_sum
def _model(codes, offs, p, x, f, D, cut):
    """Model values ``f`` at the points ``x`` and the derivatives ``D`` (P, m) by
    every parameter (astropy's ``fit_deriv`` of Gaussian1D, Const1D, Linear1D)."""
    f[:] = 0.0
    for leaf in range(codes.size):
        o = offs[leaf]
        c = codes[leaf]
        if c == 0:  # Gaussian1D(amplitude, mean, stddev)
            a, mu, inv = p[o], p[o + 1], 1.0 / p[o + 2]
            am = a * inv
            for j in range(x.size):
                z = (x[j] - mu) * inv
                t = -0.5 * (z * z)
                e = 0.0 if t < cut else math.exp(t)  # NaN stays NaN
                f[j] += a * e
                dm = e * z * am
                D[o, j], D[o + 1, j], D[o + 2, j] = e, dm, dm * z
        elif c == 1:  # Const1D(amplitude)
            for j in range(x.size):
                f[j] += p[o]
                D[o, j] = 1.0
        else:  # Linear1D(slope, intercept)
            for j in range(x.size):
                f[j] += p[o] * x[j] + p[o + 1]
                D[o, j], D[o + 1, j] = x[j], 1.0


@_sum
def _gram(Jc, r, A, g):
    """``A = Jc Jc^T``, ``g = Jc r``."""
    K, m = Jc.shape
    for a in range(K):
        s = 0.0
        for j in range(m):
            s += Jc[a, j] * r[j]
        g[a] = s
        for b in range(a + 1):
            s = 0.0
            for j in range(m):
                s += Jc[a, j] * Jc[b, j]
            A[a, b] = A[b, a] = s


@_sum
def _jac(free, pin, w, valid, D, tiny, Jc):
    """Rows of J (zero at invalid points and for pinned parameters); entries below
    ``tiny`` in magnitude are zero."""
    for a in range(free.size):
        k = free[a]
        if pin[a]:
            Jc[a] = 0.0
            continue
        for j in range(w.size):
            Jk = w[j] * D[k, j]
            Jc[a, j] = 0.0 if (not valid[j]) | (abs(Jk) < tiny) else Jk  # NaN stays


@_inline
def _copy(src, dst):
    """``dst[:] = src`` for vectors (a slice assignment would need the NRT)."""
    for k in range(src.size):
        dst[k] = src[k]


@_inline
def _copy2(src, dst):
    """``dst[:] = src`` for matrices."""
    for i in range(src.shape[0]):
        for k in range(src.shape[1]):
            dst[i, k] = src[i, k]


@_inline
def _full(p0, free, q, p):
    for k in range(p0.size):
        p[k] = p0[k]
    for k in range(free.size):
        p[free[k]] = q[k]


@_sum
def _resid(codes, offs, x, y, w, valid, p, pd, same, f, D, r, D2, cut):
    """Residuals ``r`` and ``sum r^2`` at ``p``, derivatives ``D`` at ``pd`` (at ``p``
    if ``same``); model values ``exp(t)`` for ``t < cut`` taken as 0."""
    if same:
        _model(codes, offs, p, x, f, D, cut)
    else:
        _model(codes, offs, pd, x, f, D, cut)
        _model(codes, offs, p, x, f, D2, cut)
    F = 0.0
    for j in range(y.size):
        rj = w[j] * (f[j] - y[j])
        r[j] = rj if valid[j] else 0.0
        F += r[j] * r[j]
    return F


@_sum
def _eval(codes, offs, free, pin, x, y, w, valid, p, pd, same, A, g, ws):
    """Cost ``F = 1/2 sum r^2`` at ``p``, and the normal equations there as the
    numpy solver's ``ev.normal``: ``A = (sig J)^T (sig J)`` and ``g = (sig J)^T r``
    (pinned columns zero), J scaled by a power of two ``sig`` where ``J^T J`` would
    under- or overflow. One evaluation of the model; returns ``(F, sig, bad)``
    (``bad``: A or g non-finite, both then zero). Unless ``same``, the derivatives
    are taken at ``pd`` (MINPACK with bounds: the model sees clipped parameters,
    ``fit_deriv`` the parameters as they are)."""
    f, D, r, Jc, D2 = ws
    K = free.size
    F = _resid(codes, offs, x, y, w, valid, p, pd, same, f, D, r, D2, _LOG_TINY)
    _jac(free, pin, w, valid, D, _TINY_J, Jc)
    _gram(Jc, r, A, g)
    big, small = 0.0, 1.0
    for k in range(K):
        big, small = _max(big, A[k, k]), _min(small, A[k, k])
    sig = 1.0
    if not (big < 1e200) or small < 1e-200:  # J again, nothing flushed
        F = _resid(codes, offs, x, y, w, valid, p, pd, same, f, D, r, D2, _EXP_ZERO)
        _jac(free, pin, w, valid, D, 0.0, Jc)
        mx = 0.0
        for a in range(K):
            for j in range(y.size):
                mx = _max(mx, abs(Jc[a, j]))
        e = math.frexp(mx if math.isfinite(mx) and mx > 0 else 1.0)[1]
        sig = math.ldexp(1.0, min(max(-e, -900), 900))
        Jc *= sig
        _gram(Jc, r, A, g)
    bad = False
    for a in range(K):
        bad |= not math.isfinite(g[a])
        for b in range(K):
            bad |= not math.isfinite(A[a, b])
    if bad:
        A[:] = 0.0
        g[:] = 0.0
    return 0.5 * F, sig, bad


# --------------------------------------------------------------------------- algebra
@_inline
def _solve(B, g, p, M):
    """``p = -B^-1 g`` by Gaussian elimination with partial pivoting; False if a
    pivot is exactly zero (LAPACK's ``gesv`` singular test)."""
    K = g.size
    for i in range(K):
        for j in range(K):
            M[i, j] = B[i, j]
        p[i] = -g[i]
    for c in range(K):
        piv = c
        for i in range(c + 1, K):
            if abs(M[i, c]) > abs(M[piv, c]):
                piv = i
        if M[piv, c] == 0.0:
            return False
        if piv != c:
            for j in range(K):
                M[c, j], M[piv, j] = M[piv, j], M[c, j]
            p[c], p[piv] = p[piv], p[c]
        for i in range(c + 1, K):
            f = M[i, c] / M[c, c]
            for j in range(c, K):
                M[i, j] -= f * M[c, j]
            p[i] -= f * p[c]
    for i in range(K - 1, -1, -1):
        s = p[i]
        for j in range(i + 1, K):
            s -= M[i, j] * p[j]
        p[i] = s / M[i, i]
    return True


@_inline
def _gauss_newton(B, g, p, M):
    """``_lsq._gauss_newton``: ``-B^-1 g``, NaN where it does not exist."""
    ok = True
    for k in range(g.size):
        ok &= B[k, k] > 0 and math.isfinite(B[k, k]) and math.isfinite(g[k])
    if not (ok and _solve(B, g, p, M)):
        p[:] = _NAN


@_jit
def _eigh(B, s2, V, M):
    """Eigenvalues ``s2`` (ascending) and vectors (columns of ``V``) of the symmetric
    ``B`` by cyclic Jacobi rotations (Golub and Van Loan, 8.5): for the K x K
    matrices here faster than a LAPACK call, and it starts no BLAS threads."""
    K = B.shape[0]
    fro = 0.0
    for i in range(K):
        for j in range(K):
            M[i, j] = B[i, j]
            V[i, j] = 1.0 if i == j else 0.0
            fro = _max(fro, abs(B[i, j]))  # NaN stays NaN
    if not math.isfinite(fro):
        s2[:] = _NAN
        return
    for _ in range(64):  # converges quadratically: a handful of sweeps
        rotated = False
        for i in range(K - 1):
            for j in range(i + 1, K):
                # negligible next to its diagonal (Demmel and Veselic's criterion): zero
                if abs(M[i, j]) <= _EPS * math.sqrt(abs(M[i, i])) * math.sqrt(abs(M[j, j])) or (
                    abs(M[i, j]) <= max(_DWARF_ROT * fro, _TINY)
                ):
                    M[i, j] = M[j, i] = 0.0
                    continue
                rotated = True
                tau = (M[j, j] - M[i, i]) / (2.0 * M[i, j])
                t = (1.0 if tau >= 0 else -1.0) / (abs(tau) + math.sqrt(1.0 + tau * tau))
                c = 1.0 / math.sqrt(1.0 + t * t)
                sn = t * c
                for k in range(K):  # M <- M G (columns i, j)
                    mki, mkj = M[k, i], M[k, j]
                    M[k, i], M[k, j] = c * mki - sn * mkj, sn * mki + c * mkj
                for k in range(K):  # M <- G^T M (rows i, j)
                    mik, mjk = M[i, k], M[j, k]
                    M[i, k], M[j, k] = c * mik - sn * mjk, sn * mik + c * mjk
                for k in range(K):
                    vki, vkj = V[k, i], V[k, j]
                    V[k, i], V[k, j] = c * vki - sn * vkj, sn * vki + c * vkj
        if not rotated:
            break
    for i in range(K):
        s2[i] = M[i, i]
    for i in range(1, K):  # insertion sort, ascending, vectors along
        j = i
        while j > 0 and s2[j - 1] > s2[j]:
            s2[j - 1], s2[j] = s2[j], s2[j - 1]
            for k in range(K):
                V[k, j - 1], V[k, j] = V[k, j], V[k, j - 1]
            j -= 1


@_jit
def _eig(B, g, s2, V, suf, M):
    """``_lsq._eig``: eigenvalues ``s2 >= 0`` (ascending), vectors ``V``, ``V^T g``."""
    _eigh(B, s2, V, M)
    for j in range(g.size):
        s2[j] = max(s2[j], 0.0)
        acc = 0.0
        for k in range(g.size):
            acc += V[k, j] * g[k]
        suf[j] = acc


@_inline
def _phi(s2, suf, al, d):
    """scipy's ``phi_and_derivative``."""
    pn2 = 0.0
    for k in range(s2.size):
        y = suf[k] / (s2[k] + al)
        pn2 += y * y
    pn = math.sqrt(pn2)
    ws = 0.0
    for k in range(s2.size):
        den = s2[k] + al
        y = suf[k] / den / pn
        ws += y * y / den
    return pn - d, -pn * ws


@_jit
def _more(B, g, delta, alpha, mrows, p, M, eig_v, eig_u, eig_V):
    """``_lsq._more_scipy`` for one fit: step ``p`` (filled) and the LM parameter."""
    K = g.size
    _gauss_newton(B, g, p, M)
    pn = math.sqrt(_dot(p, p))
    fin = True
    for k in range(K):
        fin &= math.isfinite(p[k])
    if fin and pn <= delta:
        return 0.0
    s2, suf, V = eig_v, eig_u, eig_V
    _eig(B, g, s2, V, suf, M)
    full = mrows >= K and s2[0] > _RANK_TOL * s2[K - 1]
    pgn2 = 0.0
    for j in range(K):
        y = suf[j] / s2[j]
        pgn2 += y * y
    gn = full and math.sqrt(pgn2) <= delta
    a = alpha
    if gn:
        al = 0.0
        for k in range(K):
            acc = 0.0
            for j in range(K):
                acc += V[k, j] * (suf[j] / s2[j])
            p[k] = -acc
    else:
        upper = math.sqrt(_dot(suf, suf)) / delta
        f0, fp0 = _phi(s2, suf, 0.0, delta)
        lower = -f0 / fp0 if full else 0.0
        if not full and a == 0:
            a = _max(1e-3 * upper, math.sqrt(lower * upper))
        for _ in range(10):
            if a < lower or a > upper:
                a = _max(1e-3 * upper, math.sqrt(lower * upper))
            f, fp = _phi(s2, suf, a, delta)
            if f < 0:
                upper = a
            ratio = f / fp
            lower = _max(lower, a - ratio)
            a = a - (f + delta) * ratio / delta
            if abs(f) < 0.01 * delta:
                break
        for k in range(K):
            acc = 0.0
            for j in range(K):
                acc += V[k, j] * (suf[j] / (s2[j] + a))
            p[k] = -acc
        scale = delta / math.sqrt(_dot(p, p))
        for k in range(K):
            p[k] *= scale
        al = a
    for k in range(K):
        if not math.isfinite(p[k]):
            p[k] = 0.0
    return al


@_inline
def _cl_scaling(q, g, lo, hi, v, dv):
    """scipy's ``CL_scaling_vector``."""
    for k in range(q.size):
        if g[k] < 0 and math.isfinite(hi[k]):
            v[k], dv[k] = hi[k] - q[k], -1.0
        elif g[k] > 0 and math.isfinite(lo[k]):
            v[k], dv[k] = q[k] - lo[k], 1.0
        else:
            v[k], dv[k] = 1.0, 0.0


@_inline
def _to_bound(q, s, lo, hi, hits):
    """scipy's ``step_size_to_bound``; ``hits`` gets ``(t == tmin) * sign(s)``."""
    K = q.size
    tmin = _INF
    for k in range(K):
        t = _max((lo[k] - q[k]) / s[k], (hi[k] - q[k]) / s[k]) if s[k] != 0 else _INF
        hits[k] = t
        tmin = _min(tmin, t) if k else t
    if K == 0:
        tmin = _INF
    for k in range(K):
        sgn = 0.0 if s[k] == 0 else (1.0 if s[k] > 0 else -1.0)
        if s[k] != s[k]:
            sgn = _NAN
        hits[k] = (1.0 if hits[k] == tmin else 0.0) * sgn
    return tmin


@_inline
def _min_quad_1d(a, b, lo, hi, c):
    """scipy's ``minimize_quadratic_1d``: ``(t, value)``."""
    ext = -0.5 * b / a
    ts = (lo, hi, ext if (a != 0 and lo < ext and ext < hi) else _NAN)
    best_t, best_y = _NAN, _INF
    for k in range(3):
        t = ts[k]
        y = t * (a * t + b) + c
        if y != y:
            y = _INF
        if k == 0 or y < best_y:
            best_t, best_y = t, y
    return best_t, best_y


@_jit
def _select_step(q, B, g_h, p_h, d, delta, lo, hi, theta, step, step_h, S):
    """``_lsq._select_step`` for one fit; fills ``step``, ``step_h``, returns pred."""
    K = q.size
    p, r_h, hits, r, ph, qp, ag = S  # scratch rows
    for k in range(K):
        p[k] = d[k] * p_h[k]
    p_stride = _to_bound(q, p, lo, hi, hits)
    for k in range(K):
        r_h[k] = -p_h[k] if hits[k] != 0 else p_h[k]
        r[k] = d[k] * r_h[k]
    for k in range(K):
        p[k] *= p_stride
        ph[k] = p_h[k] * p_stride
    a_, b_ = _dot(r_h, r_h), _dot(ph, r_h)
    c_ = _dot(ph, ph) - delta * delta
    qq = -(b_ + math.copysign(math.sqrt(b_ * b_ - a_ * c_), b_))
    to_tr = _max(qq / a_, c_ / qq)
    for k in range(K):
        qp[k] = q[k] + p[k]
    to_bound = _to_bound(qp, r, lo, hi, hits)
    r_stride = _min(to_bound, to_tr)
    if r_stride > 0:
        r_lo = (1 - theta) * p_stride / r_stride
        r_hi = theta * to_bound if r_stride == to_bound else to_tr
    else:
        r_lo, r_hi = 0.0, -1.0
    ok = r_lo <= r_hi
    a1 = 0.5 * _quad(B, r_h, r_h)
    b1 = _dot(g_h, r_h) + _quad(B, ph, r_h)
    c1 = 0.5 * _quad(B, ph, ph) + _dot(g_h, ph)
    t, r_val = _min_quad_1d(a1, b1, r_lo if ok else 0.0, r_hi if ok else 0.0, c1)
    for k in range(K):
        r_h[k] = r_h[k] * t + ph[k]
    if not (ok and math.isfinite(r_val)):
        r_val = _INF
    for k in range(K):
        ph[k] *= theta
    p_val = 0.5 * _quad(B, ph, ph) + _dot(g_h, ph)
    for k in range(K):
        ag[k] = -g_h[k]
        r[k] = d[k] * ag[k]
    to_tr = delta / math.sqrt(_dot(ag, ag))
    to_bound = _to_bound(q, r, lo, hi, hits)
    stride = theta * to_bound if to_bound < to_tr else to_tr
    t2, ag_val = _min_quad_1d(0.5 * _quad(B, ag, ag), _dot(g_h, ag), 0.0, stride, 0.0)
    use_p = p_val < r_val and p_val < ag_val
    use_r = not use_p and r_val < p_val and r_val < ag_val
    for k in range(K):
        s = ph[k] if use_p else (r_h[k] if use_r else ag[k] * t2)
        step_h[k] = s if math.isfinite(s) else 0.0
        step[k] = d[k] * step_h[k]
    return -(p_val if use_p else (r_val if use_r else ag_val))


@_inline
def _feasible(q, lo, hi, rstep, out):
    """``_lsq._strictly_feasible`` for one fit."""
    for k in range(q.size):
        v = q[k]
        if rstep == 0:
            o = np.nextafter(lo[k], hi[k]) if v <= lo[k] else v
            o = np.nextafter(hi[k], lo[k]) if v >= hi[k] else o
        else:
            ld, ud = v - lo[k], hi[k] - v
            low = math.isfinite(lo[k]) and ld <= _min(ud, rstep * max(1.0, abs(lo[k])))
            upp = math.isfinite(hi[k]) and ud <= _min(ld, rstep * max(1.0, abs(hi[k])))
            o = lo[k] + rstep * max(1.0, abs(lo[k])) if low else v
            o = hi[k] - rstep * max(1.0, abs(hi[k])) if upp else o
        out[k] = 0.5 * (lo[k] + hi[k]) if (o < lo[k] or o > hi[k]) else o


# --------------------------------------------------------------------------- TRF
@_jit
def _start(codes, offs, free, pin, x, y, w, valid, p, pd, same, A, A0, g, ws):
    """``_lsq._start`` for one fit: ``(F, sig, status, message code)``; ``A0`` = ``A``."""
    F, sig, bad = _eval(codes, offs, free, pin, x, y, w, valid, p, pd, same, A, g, ws)
    code, msg = _RUNNING, 0
    if not math.isfinite(F):
        code, msg = _SINGULAR, 1
        A[:] = 0.0
        g[:] = 0.0
    elif bad:
        code, msg = _SINGULAR, 3
    _copy2(A, A0)
    return F, sig, code, msg


@_jit
def _trf_one(codes, offs, free, x, y, w, valid, p0, q, lo, hi, pin, nval, ftol, xtol, gtol,
             maxfev, A, A0, res, pp, ws, vec, mat, sel):  # fmt: skip
    """One fit by ``_lsq.trf``; ``q`` and ``A`` are updated in place; ``res`` gets
    ``(status, nfev, F, sig, message code)``. ``ws``: the model's workspace,
    ``pp`` (2, P), ``vec`` (16, K), ``mat`` (4, K, K) and ``sel`` (7, K): scratch."""
    K = free.size
    p = pp[0]
    g, g_, v, dv, d, g_h, p_h, step, step_h, qn, qs, w1, w2, gn_ = vec[:14]
    B, M, An, V = mat
    _copy(q, qs)
    _feasible(qs, lo, hi, 1e-10, q)
    _full(p0, free, q, p)
    F, sig, code, msg = _start(codes, offs, free, pin, x, y, w, valid, p, p, True, A, A0, g, ws)
    nfev = 1
    bounded = False
    for k in range(K):
        bounded |= (math.isfinite(lo[k]) or math.isfinite(hi[k])) and not pin[k]
    mrows = nval + (K if bounded else 0)
    for k in range(K):
        g_[k] = g[k] / sig
    _cl_scaling(q, g_, lo, hi, v, dv)
    delta = 0.0
    for k in range(K):
        t = 0.0 if pin[k] else q[k] / math.sqrt(v[k])
        delta += t * t
    delta = math.sqrt(delta)
    if not (delta > 0) or not math.isfinite(delta):
        delta = 1.0
    alpha = 0.0
    while True:
        for k in range(K):
            g_[k] = g[k] / sig
        _cl_scaling(q, g_, lo, hi, v, dv)
        gnorm = 0.0
        for k in range(K):
            gnorm = _max(gnorm, abs(g_[k] * v[k]))
        if code < 0 and gnorm < gtol:
            code = _CONVERGED
        if code < 0 and nfev >= maxfev:
            code = _MAX_ITERATIONS
        if code >= 0:
            break
        for k in range(K):
            d[k] = math.sqrt(v[k])
        for a in range(K):
            for b in range(K):
                B[a, b] = A[a, b] * (d[a] / sig) * (d[b] / sig)
            B[a, a] += g_[a] * dv[a]
            g_h[a] = d[a] * g_[a]
        theta = _max(0.995, 1 - gnorm)
        alpha_n = _more(B, g_h, delta, alpha, mrows, p_h, M, w1, w2, V)
        leaves = False
        for k in range(K):
            step[k] = d[k] * p_h[k]
            step_h[k] = p_h[k]
            leaves |= q[k] + step[k] < lo[k] or q[k] + step[k] > hi[k]
        pred = -(0.5 * _quad(B, p_h, p_h) + _dot(g_h, p_h))
        if leaves:
            pred = _select_step(q, B, g_h, p_h, d, delta, lo, hi, theta, step, step_h, sel)
        for k in range(K):
            qs[k] = q[k] + step[k]
        _feasible(qs, lo, hi, 0.0, qn)
        _full(p0, free, qn, p)
        # the normal equations at the trial point in the same pass: most steps are taken
        Fn, sig_n, bad_n = _eval(codes, offs, free, pin, x, y, w, valid, p, p, True, An, gn_, ws)
        nfev += 1
        fin = math.isfinite(Fn)
        if not fin:
            code = _SINGULAR
            msg = msg or 2
        hn = math.sqrt(_dot(step_h, step_h))
        ared = F - Fn
        if pred > 0:
            ratio = ared / pred
        else:
            ratio = 1.0 if (pred == 0 and ared == 0) else 0.0
        new = 0.25 * hn if ratio < 0.25 else delta
        if ratio > 0.75 and hn > 0.95 * delta:
            new = 2 * delta
        qnorm = 0.0
        for k in range(K):
            qnorm += 0.0 if pin[k] else q[k] * q[k]
        stop = (ared < ftol * F and ratio > 0.25) or (
            math.sqrt(_dot(step, step)) < xtol * (xtol + math.sqrt(qnorm))
        )
        if stop:
            alpha = alpha_n
        else:
            alpha = alpha_n * delta / new
            delta = new
        if fin and stop and code < 0:
            code = _CONVERGED
        if fin and ared > 0:
            _copy(qn, q)
            F = Fn
            _copy2(An, A)
            _copy(gn_, g)
            sig = sig_n
            if bad_n:
                code = _SINGULAR
                msg = msg or 3
    res[0], res[1], res[2], res[3], res[4] = code, nfev, F, sig, msg


@_jit
def fit_all(lm, codes, offs, free, x, y, w, valid, p0, q0, lo, hi, pin, nval, jac_raw, ftol,
            xtol, gtol, maxfev, q_out, status, nfev, F_out, A_out, sig_out, A0_out, msg,
            scratch):  # fmt: skip
    """Every fit of the block by :func:`_lm_one` (``lm``) or :func:`_trf_one`;
    ``scratch`` from :func:`scratch`."""
    res, pp, ws, vec, mat, sel = scratch
    for i in range(y.shape[0]):
        xi = x[i] if x.shape[0] > 1 else x[0]
        wi = w[i] if w.shape[0] > 1 else w[0]
        _copy(q0[i], q_out[i])
        if lm:
            _lm_one(codes, offs, free, xi, y[i], wi, valid[i], p0[i], q_out[i], lo[i], hi[i],
                    pin[i], jac_raw, ftol, xtol, gtol, maxfev, A_out[i], A0_out[i], res, pp,
                    ws, vec, mat)  # fmt: skip
        else:
            _trf_one(codes, offs, free, xi, y[i], wi, valid[i], p0[i], q_out[i], lo[i], hi[i],
                     pin[i], nval[i], ftol, xtol, gtol, maxfev, A_out[i], A0_out[i], res, pp,
                     ws, vec, mat, sel)  # fmt: skip
        status[i], nfev[i], F_out[i], sig_out[i], msg[i] = (
            int(res[0]), int(res[1]), res[2], res[3], int(res[4])
        )  # fmt: skip


# --------------------------------------------------------------------------- MINPACK
@_jit
def _lmpar(Bs, gs, delta, par, u, M, s2, suf, V, ugn, ut):
    """``_lsq._lmpar`` for one fit: step ``u`` (filled) and the LM parameter."""
    K = gs.size
    _gauss_newton(Bs, gs, u, M)
    fin = True
    for k in range(K):
        fin &= math.isfinite(u[k])
    if fin and math.sqrt(_dot(u, u)) - delta <= 0.1 * delta:
        return 0.0
    _eig(Bs, gs, s2, V, suf, M)
    top = s2[K - 1]
    full = s2[0] > _RANK_TOL * top
    for k in range(K):
        acc = 0.0
        for j in range(K):
            acc += V[k, j] * (suf[j] / s2[j] if s2[j] > _RANK_TOL * top else 0.0)
        ugn[k] = -acc
    dx = math.sqrt(_dot(ugn, ugn))
    fp = dx - delta
    gn = fp <= 0.1 * delta
    ws = 0.0
    for j in range(K):
        y = suf[j] / s2[j] / dx
        ws += y * y / s2[j]
    parl = (fp / delta) / ws
    if not (full and math.isfinite(parl)):
        parl = 0.0
    gnorm = math.sqrt(_dot(suf, suf))
    paru = gnorm / delta
    if paru == 0:
        paru = _DWARF / _min(delta, 0.1)
    p = _min(_max(par, parl), paru)
    if p == 0:
        p = gnorm / dx
    if not math.isfinite(p):
        p = 0.0
    _copy(ugn, ut)
    if not gn:
        for it in range(1, 11):
            if p == 0:
                p = _max(_DWARF, 1e-3 * paru)
            for k in range(K):
                acc = 0.0
                for j in range(K):
                    acc += V[k, j] * (suf[j] / (s2[j] + p))
                ut[k] = -acc
            dxn = math.sqrt(_dot(ut, ut))
            temp = fp
            fp = dxn - delta
            if abs(fp) <= 0.1 * delta or (parl == 0 and fp <= temp and temp < 0) or it == 10:
                break
            ws = 0.0
            for j in range(K):
                den = s2[j] + p
                y = suf[j] / den / dxn
                ws += y * y / den
            parc = (fp / delta) / ws
            if fp > 0:
                parl = _max(parl, p)
            if fp < 0:
                paru = _min(paru, p)
            p = _max(parl, p + parc)
    for k in range(K):
        u[k] = ugn[k] if gn else ut[k]
        if not math.isfinite(u[k]):
            u[k] = 0.0
    return 0.0 if gn else p


@_inline
def _lm_params(p0, free, q, lo, hi, jac_raw, p, pd, qc):
    """Parameters the model sees (free ones clipped to their bounds, as astropy's
    ``use_min_max_bounds``) into ``p``; False if ``fit_deriv`` must see others (``pd``)."""
    same = True
    for k in range(q.size):
        c = q[k]
        if c < lo[k]:
            c = lo[k]
        if c > hi[k]:
            c = hi[k]
        qc[k] = c
        same &= c == q[k]
    _full(p0, free, qc, p)
    if jac_raw and not same:
        _full(p0, free, q, pd)
        return False
    return True


@_jit
def _lm_one(codes, offs, free, x, y, w, valid, p0, q, lo, hi, pin, jac_raw, ftol, xtol, gtol,
            maxfev, A, A0, res, pp, ws, vec, mat):  # fmt: skip
    """One fit by ``_lsq.minpack`` (MINPACK's ``lmder``); as :func:`_trf_one`."""
    K = free.size
    p, pd = pp[0], pp[1]
    g, D, u, step, qn, qc, s2, suf, ugn, ut, gs, gt, gn_, cn = vec[:14]
    B, M, An, V = mat
    same = _lm_params(p0, free, q, lo, hi, jac_raw, p, pd, qc)
    F, sig, code, msg = _start(codes, offs, free, pin, x, y, w, valid, p, pd, same, A, A0, g, ws)
    nfev = 1
    xnorm = 0.0
    for k in range(K):
        c = math.sqrt(A[k, k]) / sig
        D[k] = c if c > 0 else 1.0
        t = 0.0 if pin[k] else D[k] * q[k]
        xnorm += t * t
    xnorm = math.sqrt(xnorm)
    delta = 100.0 * xnorm if xnorm > 0 else 100.0
    par, first = 0.0, True
    fnorm = math.sqrt(2 * F)
    fresh = True
    gnorm = 0.0
    while True:
        if fresh and code < 0:
            gnv = 0.0
            for k in range(K):
                cn[k] = math.sqrt(A[k, k])  # column norms of sig J
                cosk = abs(g[k]) / (cn[k] * fnorm)
                gnv = _max(gnv, cosk if cn[k] > 0 else 0.0)
            gnorm = 0.0 if fnorm == 0 else gnv
            if gnorm <= gtol:
                code = _CONVERGED
            for k in range(K):
                D[k] = _max(D[k], cn[k] / sig)
        fresh = False
        if code >= 0:
            break
        # lmpar on (B + tau par_t I) u = -tau g_t with B = (sig J / D)^T (sig J / D)
        mx = 0.0
        for k in range(K):
            gs[k] = sig * (g[k] / D[k])
            mx = _max(mx, abs(gs[k]))
        tau = math.ldexp(1.0, math.frexp(mx if mx > 0 else 1.0)[1])
        for a in range(K):
            gt[a] = gs[a] / tau
            for b in range(K):
                B[a, b] = A[a, b] / (D[a] * D[b]) / tau
        paru = math.sqrt(_dot(gt, gt)) / delta
        r = tau / sig
        par_t = paru if par > paru * r / sig else par * sig / r
        par_t = _lmpar(B, gt, delta, par_t, u, M, s2, suf, V, ugn, ut)
        par = par_t * r / sig
        for k in range(K):
            step[k] = u[k] / D[k]
            qn[k] = q[k] + step[k]
        pnorm = math.sqrt(_dot(u, u))
        if first:
            delta = _min(delta, pnorm)
        same = _lm_params(p0, free, qn, lo, hi, jac_raw, p, pd, qc)
        Fn, sig_n, bad_n = _eval(codes, offs, free, pin, x, y, w, valid, p, pd, same, An, gn_, ws)
        nfev += 1
        fin = math.isfinite(Fn)
        if not fin:
            code = _SINGULAR
            msg = msg or 2
        fnorm1 = math.sqrt(2 * Fn)
        actred = 1 - (fnorm1 / fnorm) ** 2 if 0.1 * fnorm1 < fnorm else -1.0
        t1 = _quad(A, step, step) / sig / sig / fnorm**2
        t2 = par * pnorm**2 / fnorm**2
        prered, dirder = t1 + 2 * t2, -(t1 + t2)
        ratio = actred / prered if prered != 0 else 0.0
        temp = 0.5 if actred >= 0 else 0.5 * dirder / (dirder + 0.5 * actred)
        if 0.1 * fnorm1 >= fnorm or temp < 0.1:
            temp = 0.1
        low = ratio <= 0.25
        grow = not low and (par == 0 or ratio >= 0.75)
        if low:
            delta = temp * _min(delta, pnorm / 0.1)
            par = par / temp
        elif grow:
            delta = pnorm / 0.5
            par = 0.5 * par
        acc = fin and ratio >= 1e-4
        if acc:
            xnorm = 0.0
            for k in range(K):
                t = 0.0 if pin[k] else D[k] * qn[k]
                xnorm += t * t
            xnorm = math.sqrt(xnorm)
            fnorm = fnorm1
            first = False
        small = abs(actred) <= ftol and prered <= ftol and 0.5 * ratio <= 1
        conv = fin and (small or delta <= xtol * xnorm)
        warn = (abs(actred) <= _EPS and prered <= _EPS and 0.5 * ratio <= 1) or (
            delta <= _EPS * xnorm or gnorm <= _EPS
        )
        if code < 0:
            if conv:
                code = _CONVERGED
            elif nfev >= maxfev:
                code = _MAX_ITERATIONS
            elif warn and fin:
                code, msg = _CONVERGED_WITH_WARNINGS, 4
        fresh = acc
        if acc:
            _copy(qn, q)
            F = Fn
            _copy2(An, A)
            _copy(gn_, g)
            sig = sig_n
            if bad_n and code <= _MAX_ITERATIONS:
                code = _SINGULAR
                msg = msg or 3
    res[0], res[1], res[2], res[3], res[4] = code, nfev, F, sig, msg


@_jit
def eigh_all(A, w, V, M):
    """:func:`_eigh` of every matrix of ``A`` (n, K, K); ``M``: (K, K) scratch."""
    for i in range(A.shape[0]):
        _eigh(A[i], w[i], V[i], M)


@_jit
def inv_all(A, out, M, v):
    """Inverse of every matrix of ``A`` (n, K, K), column by column with :func:`_solve`;
    NaN where a pivot is exactly zero. ``M`` (K, K) and ``v`` (2, K): scratch."""
    K = A.shape[1]
    e, col = v[0], v[1]
    for i in range(A.shape[0]):
        for c in range(K):
            for k in range(K):
                e[k] = -1.0 if k == c else 0.0  # _solve gives -B^-1 g
            if not _solve(A[i], e, col, M):
                out[i] = _NAN
                break
            for k in range(K):
                out[i, k, c] = col[k]


def scratch(m: int, P: int, K: int) -> tuple:
    """Workspace of :func:`fit_all` for fits of ``m`` points, ``P`` parameters, ``K`` free."""
    e = np.empty
    ws = (e(m), e((P, m)), e(m), e((K, m)), e((P, m)))
    return e(5), e((2, P)), ws, e((16, K)), e((4, K, K)), e((7, K))
