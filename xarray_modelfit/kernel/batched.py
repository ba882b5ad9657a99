"""Batched non-linear least squares: one block of fits solved together.

``fit_batched`` minimises, independently for every fit of a ``FitBlock``,
``F(q) = 1/2 sum_j r_j^2``, ``r_j = w_j (f(x_j; p(q)) - y_j)`` over the valid
points, ``q`` being the free parameters (``p`` adds fixed values and tied
expressions). All fits advance in lock-step through numpy operations over a
leading batch axis, each with its own state (no fit influences another), and
fits that terminate leave the working arrays (an active set). Blocks are
processed in slices of ~2**18 points to bound temporaries.

Algorithm: a trust-region Levenberg-Marquardt method (Moré 1978) as in
``scipy.optimize.least_squares`` (``scipy/optimize/_lsq``): each step solves
``min 1/2 p^T J^T J p + g^T p`` with ``||D p|| <= Delta`` by Moré's safeguarded
Newton iteration on the LM parameter (``solve_lsq_trust_region``; here from the
eigen-decomposition of ``J^T J``, skipped when the Gauss-Newton step fits), and
``Delta`` follows ``update_tr_radius``. ``D`` is MINPACK's scaling (running
maximum of the column norms of ``J``), which makes the method independent of
parameter units (Hz vs km/s), with ``Delta0 = ||D q0||``. Bounds:
steps stop at 99.5% of the distance to a bound (as TRF/dogbox keep iterates
strictly feasible, so degenerate bounds like ``stddev > 0`` cannot trap a fit);
components that would cross are cut and the others re-solved with them fixed,
and a parameter on a bound with an outward gradient is frozen (projected
Newton, Bertsekas 1982). Termination as scipy's ``check_termination``, with
astropy's ``xtol=acc`` and ``max_nfev=maxiter``: ``ftol=1e-8`` and ``xtol`` on
every trial step, ``gtol=1e-8`` on the projected gradient; ``nfev`` counts
residual evaluations (the initial one, not finite-difference ones).

Jacobian: analytic from ``fit_deriv`` (compound ``+ - * /`` models leaf by
leaf, since astropy's compound ``fit_deriv`` does not broadcast over parameter
arrays) unless absent, ``estimate_jacobian=True``, or a probe finds it does not
broadcast or disagrees with finite differences; then scipy's ``2-point`` steps
with ``diff_step=epsilon``. Ties enter by the chain rule, ``dp_tied/dq`` from
central differences of the tie expressions evaluated on parameter arrays.

Covariance as astropy's ``_NLLSQFitter``: ``pinv(J^T J)`` at the solution with
singular values of ``J`` below ``eps max(J.shape) s[0]`` dropped, times
``chi2 / (N - K)`` without weights, none if ``N <= K``. A Jacobian that is
rank-deficient by that rule marks the fit ``Status.SINGULAR``.

References: J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and
theory", Lecture Notes in Mathematics 630 (1978) 105-116; M. A. Branch,
T. F. Coleman, Y. Li, "A subspace, interior, and conjugate gradient method for
large-scale bound-constrained minimization problems", SIAM J. Sci. Comput. 21
(1999) 1-23 (scipy's TRF); D. P. Bertsekas, "Projected Newton methods for
optimization problems with simple constraints", SIAM J. Control Optim. 20
(1982) 221-246.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from xarray_modelfit.kernel.block import BlockResult, EngineSetup, FitBlock
from xarray_modelfit.kernel.status import Status

__all__ = ["NONLINEAR_FITTERS", "batched_support", "fit_batched"]

NONLINEAR_FITTERS = ("LevMarLSQFitter", "LMLSQFitter", "TRFLSQFitter", "DogBoxLSQFitter")
_FTOL = _GTOL = 1e-8  # scipy.optimize.least_squares defaults, which astropy keeps
_THETA = 0.995  # largest fraction of the distance to a bound covered by one step
_EPS = np.finfo(float).eps
_CHUNK_ELEMENTS = 2**18  # fits x points per pass: bounds temporaries, keeps arrays in cache


def _fitter_kind(fitter: Any) -> str | None:
    """'nonlinear', 'linear' or None, by exact class (subclasses may change behaviour)."""
    from astropy.modeling import fitting

    if type(fitter) is fitting.LinearLSQFitter:
        return "linear"
    if type(fitter) in {getattr(fitting, name) for name in NONLINEAR_FITTERS}:
        return "nonlinear"
    return None


# --------------------------------------------------------------------------- support
def batched_support(model: Any, fitter: Any) -> str | None:
    """Say whether the batched engine can fit ``model`` with ``fitter``.

    Parameters
    ----------
    model : astropy.modeling.Model
        Unitless model with scalar parameters.
    fitter : astropy fitter instance

    Returns
    -------
    str or None
        ``None`` when supported, otherwise a sentence saying why not.
    """
    kind = _fitter_kind(fitter)
    if kind == "linear":
        from xarray_modelfit.kernel.linear import linear_support

        return linear_support(model)
    if kind is None:
        return (
            f"the batched engine supports {', '.join(NONLINEAR_FITTERS)} and "
            f"LinearLSQFitter, not {type(fitter).__name__}"
        )
    return _model_support(model)


def _model_support(model: Any) -> str | None:
    """Checks common to both batched paths: model shape and broadcasting."""
    name = type(model).__name__
    if not getattr(model, "fittable", False):
        return f"{name} is not fittable"
    if model.n_outputs != 1 or len(model) != 1:
        return "the batched engine fits single models with one output only"
    if any(np.size(getattr(model, nm).value) != 1 for nm in model.param_names):
        return "the batched engine needs scalar parameters"
    p, x = _probe_params(model), _probe_x(model)
    try:
        batch = np.broadcast_to(model.evaluate(*x, *_cols(p)), (2, x[0].shape[1]))
        single = [np.broadcast_to(model.evaluate(*x, *row), x[0].shape)[0] for row in p]
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot broadcast"
        return (
            f"{name}.evaluate does not broadcast over (n, 1) parameter arrays "
            f"({type(exc).__name__}: {exc})"
        )
    if not np.allclose(batch, single, rtol=1e-10, atol=0, equal_nan=True):
        return f"{name}.evaluate gives other values for (n, 1) parameter arrays than for scalars"
    return None


def _probe_params(model: Any) -> np.ndarray:
    """Two rows of parameters near the model's own values (data independent)."""
    p = np.asarray(model.parameters, dtype=float)
    p = np.where(p == 0, 0.25, p)
    return np.stack([p, p * 1.1 + 0.01])


def _probe_x(model: Any) -> tuple[np.ndarray, ...]:
    """Seven world points per input, shape (1, 7)."""
    return tuple(np.linspace(0.3, 1.7, 7)[None, :] + 0.05 * k for k in range(model.n_inputs))


def _cols(p: np.ndarray) -> list[np.ndarray]:
    """Parameter columns of shape (n, 1) for ``model.evaluate``."""
    return [p[:, j : j + 1] for j in range(p.shape[1])]


# --------------------------------------------------------------------------- ties
class _ArrayParam(np.ndarray):
    """An array standing in for a Parameter inside tie expressions."""

    unit = None

    @property
    def value(self) -> np.ndarray:
        return self.view(np.ndarray)

    quantity = value


class _TieProxy:
    """Model stand-in whose parameters are arrays of shape (n,); ``m[i]`` works too."""

    def __init__(self, model: Any, values: dict[str, np.ndarray], names: dict[str, str]):
        self.__dict__.update(_model=model, _values=values, _names=names)

    def __getattr__(self, name: str) -> Any:
        if name in self._names:
            return self._values[self._names[name]].view(_ArrayParam)
        return getattr(self._model, name)

    def __getitem__(self, key: Any) -> _TieProxy:
        sub = self._model[key]
        (idx,) = [i for i in range(self._model.n_submodels) if self._model[i] is sub]
        names = {ln: cn for cn, (li, ln) in self._model._param_map.items() if li == idx}
        return _TieProxy(sub, self._values, names)


# --------------------------------------------------------------------------- derivatives
def _gauss1d_value(x: np.ndarray, amplitude: Any, mean: Any, stddev: Any) -> np.ndarray:
    """Gaussian1D.evaluate with in-place temporaries (the target model of the engine)."""
    z = x - mean
    z *= z
    z *= -0.5 / stddev**2
    np.exp(z, out=z)
    z *= amplitude
    return z


def _gauss1d_deriv(x: np.ndarray, amplitude: Any, mean: Any, stddev: Any) -> list[np.ndarray]:
    """Gaussian1D.fit_deriv with shared, in-place temporaries (3x faster)."""
    z = x - mean
    z *= 1.0 / stddev
    e = z * z
    e *= -0.5
    np.exp(e, out=e)
    d_mean = e * z
    d_mean *= amplitude / stddev
    return [e, d_mean, d_mean * z]


@functools.cache
def _fast_kernels() -> dict[type, tuple[Any, Any]]:
    """Exact model class -> (value, fit_deriv) replacements; checked by the probes."""
    from astropy.modeling.functional_models import Gaussian1D

    return {Gaussian1D: (_gauss1d_value, _gauss1d_deriv)}


class _NoAnalytic(Exception):
    """The analytic Jacobian is unavailable for this model."""


def _tree_deriv(model: Any, x: tuple, params: list, shape: tuple, value: bool = False) -> tuple:
    """Value (if asked for, else None) and derivatives, one (n, m) array per parameter."""
    from astropy.modeling.core import CompoundModel

    if isinstance(model, CompoundModel):
        op = model.op
        if op not in ("+", "-", "*", "/"):
            raise _NoAnalytic(f"operator {op!r}")
        nl = len(model.left.param_names)
        both = value or op in ("*", "/")
        lv, ld = _tree_deriv(model.left, x, params[:nl], shape, both)
        rv, rd = _tree_deriv(model.right, x, params[nl:], shape, both)
        if op == "+":
            return (lv + rv if value else None), ld + rd
        if op == "-":
            return (lv - rv if value else None), ld + [-d for d in rd]
        if op == "*":
            return lv * rv, [d * rv for d in ld] + [lv * d for d in rd]
        return lv / rv, [d / rv for d in ld] + [-lv * d / rv**2 for d in rd]
    if model.fit_deriv is None:
        raise _NoAnalytic(f"{type(model).__name__} has no fit_deriv")
    val = np.broadcast_to(model.evaluate(*x, *params), shape) if value else None
    fast = _fast_kernels().get(type(model))
    raw = (fast[1] if fast else model.fit_deriv)(*x, *params)
    if not model.col_fit_deriv:
        raw = np.moveaxis(np.asarray(raw), -1, 0)
    out = []
    for d in raw:
        d = np.asarray(d, dtype=float)
        try:
            out.append(np.broadcast_to(d, shape))
        except ValueError:
            if d.size != shape[0] * shape[1]:
                raise _NoAnalytic("fit_deriv output has an unexpected shape") from None
            out.append(d.reshape(shape))
    if len(out) != len(params):
        raise _NoAnalytic("fit_deriv returned the wrong number of derivatives")
    return val, out


def _fd_step(q: np.ndarray, hi: np.ndarray, rel: float) -> np.ndarray:
    """scipy's 2-point step for a given ``rel_step``, turned back at the upper bound."""
    sign = np.where(q >= 0, 1.0, -1.0)
    h = rel * sign * np.abs(q)
    h = np.where((q + h) - q == 0, rel * sign * np.maximum(1.0, np.abs(q)), h)
    return np.where(q + h > hi, -h, h)


def _normal(J: list[np.ndarray], r: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``J^T J`` (n, K, K) and ``J^T r`` (n, K) from K arrays of shape (n, m)."""
    K = len(J)
    A = np.empty((J[0].shape[0] if K else r.shape[0], K, K))
    for i in range(K):
        for j in range(i + 1):
            A[:, i, j] = A[:, j, i] = np.einsum("nm,nm->n", J[i], J[j])
    if r is None:
        return A, None
    g = [np.einsum("nm,nm->n", Jk, r) for Jk in J]
    return A, np.stack(g, axis=1) if K else np.zeros((A.shape[0], 0))


# --------------------------------------------------------------------------- problem
class _Data:
    """Arrays of a subset of fits: x, y, valid, w (or None), p0, lo/hi (free params), rows."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)

    def take(self, sel: np.ndarray, skip: tuple[str, ...] = ()) -> _Data:
        new = {
            k: (v[sel] if isinstance(v, np.ndarray) and k not in skip else v)
            for k, v in self.__dict__.items()
        }
        new["x"] = tuple(xx if xx.shape[0] == 1 else xx[sel] for xx in self.x)
        return _Data(**new)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.size, self.y.shape[1])  # y may be left untaken


class _Problem:
    """Model and constraints; residuals and Jacobians over parameter arrays."""

    def __init__(self, model: Any, kwargs: dict[str, Any]):
        from astropy.modeling.optimizers import DEFAULT_EPS

        self.model = model
        names = list(model.param_names)
        self.P = len(names)
        self.ties = [(j, model.tied[nm]) for j, nm in enumerate(names) if model.tied[nm]]
        self.tied_idx = np.array([j for j, _ in self.ties], dtype=int)
        fixed = [j for j, nm in enumerate(names) if model.fixed[nm]]
        self.free = np.setdiff1d(np.arange(self.P), np.r_[fixed, self.tied_idx].astype(int))
        self.K = self.free.size
        self.eps = float(kwargs.get("epsilon", DEFAULT_EPS))
        self.failed: dict[int, str] = {}  # block row -> message of the exception
        fast = _fast_kernels().get(type(model))
        self.evaluate = fast[0] if fast else model.evaluate
        self.tie_proxy = bool(self.ties) and self._check_proxy()
        self.analytic = not kwargs.get("estimate_jacobian", False) and self._check_analytic()

    def full(self, q: np.ndarray, p0: np.ndarray) -> np.ndarray:
        """Full parameters (n, P): p0 for fixed ones, q for free ones, ties applied."""
        p = p0.copy()
        p[:, self.free] = q
        if not self.ties:
            return p
        names = self.model.param_names
        if self.tie_proxy:
            proxy = _TieProxy(
                self.model, {nm: p[:, j] for j, nm in enumerate(names)}, {nm: nm for nm in names}
            )
            for j, fn in self.ties:
                p[:, j] = np.broadcast_to(np.asarray(fn(proxy), dtype=float), p.shape[:1])
            return p
        mc = self.model.copy()  # fall back to a real model, one fit at a time
        for i in range(p.shape[0]):
            mc.parameters = p[i]
            for j, fn in self.ties:
                p[i, j] = float(np.asarray(fn(mc)))
                setattr(mc, names[j], p[i, j])
        return p

    def _check_proxy(self) -> bool:
        """Do the tie expressions give on arrays what they give on a real model?"""
        p = _probe_params(self.model)
        try:
            self.tie_proxy = True
            a = self.full(p[:, self.free], p)
        except Exception:  # noqa: BLE001 - the proxy cannot run this tie
            return False
        self.tie_proxy = False
        return bool(
            np.allclose(a, self.full(p[:, self.free], p), rtol=1e-12, atol=0, equal_nan=True)
        )

    def values(self, p: np.ndarray, d: _Data) -> np.ndarray:
        """Model values (n, m); fits whose evaluation raises get NaN and join ``failed``."""
        with np.errstate(all="ignore"):
            try:
                return np.broadcast_to(self.evaluate(*d.x, *_cols(p)), d.shape)
            except Exception:  # noqa: BLE001 - isolate the failing fits
                one = lambda i: [self.model.evaluate(*d.take([i]).x, *_cols(p[i : i + 1]))]  # noqa: E731
                return self._per_fit(d, one, 1)[0]

    def _per_fit(self, d: _Data, fn: Any, n_out: int) -> list[np.ndarray]:
        """``fn(i)`` (n_out arrays of shape (1, m)) fit by fit; raising fits get NaN."""
        out = [np.full(d.shape, np.nan) for _ in range(n_out)]
        for i in range(d.shape[0]):
            try:
                for o, v in zip(out, fn(i), strict=True):
                    o[i] = np.broadcast_to(v, (1, d.shape[1]))[0]
            except Exception as exc:  # noqa: BLE001
                self.failed[int(d.rows[i])] = f"{type(exc).__name__}: {exc}"
        return out

    def resid(self, q: np.ndarray, d: _Data) -> np.ndarray:
        """Weighted residuals (n, m), zero at invalid points."""
        f = self.values(self.full(q, d.p0), d)
        with np.errstate(all="ignore"):
            r = f - d.y
            if d.w is not None:
                r *= d.w
        return r if d.all_valid else np.where(d.valid, r, 0.0)

    def jac(self, q: np.ndarray, d: _Data, r: np.ndarray | None) -> list[np.ndarray]:
        """Weighted Jacobian of the residuals: K arrays of shape (n, m).

        If ``fit_deriv`` raises for the batch, fits are redone one by one and the
        raising ones get NaN columns and join ``failed``.
        """
        try:
            return self._jac(q, d, r)
        except Exception:  # noqa: BLE001 - isolate the failing fits
            if d.shape[0] == 1:
                raise
        rr = (lambda i: None) if r is None else (lambda i: r[i : i + 1])  # noqa: E731
        return self._per_fit(d, lambda i: self._jac(q[i : i + 1], d.take([i]), rr(i)), self.K)

    def _jac(self, q: np.ndarray, d: _Data, r: np.ndarray | None) -> list[np.ndarray]:
        n, m = d.shape
        with np.errstate(all="ignore"):
            if not self.analytic:
                h = _fd_step(q, d.hi, self.eps)
                J = []
                for k in range(self.K):
                    qk = q.copy()
                    qk[:, k] += h[:, k]
                    J.append((self.resid(qk, d) - r) / (qk[:, k] - q[:, k])[:, None])
                return J
            derivs = _tree_deriv(self.model, d.x, _cols(self.full(q, d.p0)), (n, m))[1]
            J = [derivs[j] for j in self.free]
            if self.ties:
                dT = self._tie_grad(q, d.p0)  # (T, K, n)
                for k in range(self.K):
                    for t, j in enumerate(self.tied_idx):
                        J[k] = J[k] + dT[t, k][:, None] * derivs[j]
            if d.w is not None:
                J = [Jk * d.w for Jk in J]
            if not d.all_valid:
                J = [np.where(d.valid, Jk, 0.0) for Jk in J]
            return [np.broadcast_to(Jk, (n, m)) for Jk in J]

    def _tie_grad(self, q: np.ndarray, p0: np.ndarray) -> np.ndarray:
        """Central differences of the tied values w.r.t. the free ones: (T, K, n)."""
        out = np.empty((self.tied_idx.size, self.K, q.shape[0]))
        h = _fd_step(q, np.full_like(q, np.inf), _EPS ** (1 / 3))
        for k in range(self.K):
            qp, qm = q.copy(), q.copy()
            qp[:, k] += h[:, k]
            qm[:, k] -= h[:, k]
            diff = self.full(qp, p0)[:, self.tied_idx] - self.full(qm, p0)[:, self.tied_idx]
            out[:, k] = (diff / (2 * h[:, k, None])).T
        return out

    def _check_analytic(self) -> bool:
        """Probe fit_deriv: does it broadcast over parameter rows and agree with FD?"""
        if self.model.fit_deriv is None or self.K == 0:
            return False
        p, x = _probe_params(self.model), _probe_x(self.model)
        inf = np.full((2, self.K), np.inf)
        d = _Data(x=x, y=np.zeros((2, x[0].shape[1])), valid=None, w=None, p0=p, lo=-inf, hi=inf,
                  rows=np.array([-1, -2]), all_valid=True)  # fmt: skip
        q = p[:, self.free]
        try:
            self.analytic = True
            Ja = np.array(self._jac(q, d, None))
            rows = [
                np.array(self._jac(q[i : i + 1], d.take(np.array([i])), None))[:, 0] for i in (0, 1)
            ]
            self.analytic = False
            Jf = np.array(self._jac(q, d, self.resid(q, d)))
        except Exception:  # noqa: BLE001 - _NoAnalytic or a fit_deriv failing on arrays
            return False
        finally:
            self.failed.clear()
        if not np.allclose(Ja, np.stack(rows, axis=1), rtol=1e-10, atol=0, equal_nan=True):
            return False
        ok = np.isfinite(Ja) & np.isfinite(Jf)
        err = np.sqrt(np.sum(np.where(ok, Ja - Jf, 0) ** 2, axis=2))
        scale = np.sqrt(np.sum(np.where(ok, Jf, 0) ** 2, axis=2))
        return bool(np.all(err <= 1e-3 * scale + 1e-6 * scale.max()))


# --------------------------------------------------------------------------- engine
def fit_batched(block: FitBlock, setup: EngineSetup) -> BlockResult:
    """Fit every active row of ``block`` with a batched trust-region Levenberg-Marquardt.

    Parameters
    ----------
    block : FitBlock
        ``n`` fits sharing ``setup.model``.
    setup : EngineSetup
        Unitless model; fitter of :data:`NONLINEAR_FITTERS` (``LinearLSQFitter``
        dispatches to :func:`xarray_modelfit.kernel.linear.fit_linear`);
        ``fitter_kwargs`` ``maxiter``, ``acc``, ``epsilon``,
        ``estimate_jacobian`` with astropy's defaults (others are ignored).

    Returns
    -------
    BlockResult
        ``CONVERGED``; ``MAX_ITERATIONS`` (parameters kept); ``SINGULAR``
        (non-finite model or Jacobian, or rank-deficient Jacobian at the
        solution: NaN parameters); ``FAILED`` (the model raised, message in
        ``messages``); ``SKIPPED_NO_DATA`` / ``SKIPPED_TOO_FEW_POINTS`` for
        active rows with no or fewer valid points than free parameters.
    """
    from astropy.modeling.optimizers import DEFAULT_ACC, DEFAULT_MAXITER

    kind = _fitter_kind(setup.fitter)
    if kind == "linear":
        from xarray_modelfit.kernel.linear import fit_linear

        return fit_linear(block, setup)
    if kind is None:
        raise ValueError(batched_support(setup.model, setup.fitter))
    kw = dict(setup.fitter_kwargs or {})
    prob = _Problem(setup.model, kw)
    res = BlockResult.empty(block.n, prob.P, setup.covariance)
    rows = _triage(block, prob.K, res)
    if rows.size == 0:
        return res
    opts = {
        "maxfev": int(kw.get("maxiter", DEFAULT_MAXITER)),
        "xtol": float(kw.get("acc", DEFAULT_ACC)),
    }
    step = max(1, _CHUNK_ELEMENTS // max(1, block.y.shape[1]))
    for start in range(0, rows.size, step):  # bounded temporaries, cache-friendly arrays
        data = _block_data(block, rows[start : start + step], prob)
        q0 = np.clip(data.p0[:, prob.free], data.lo, data.hi)
        out = _trust_region(prob, data, q0, opts, res.messages)
        _finalise(prob, data, out, res, weighted=block.weights is not None)
    res.messages.update(prob.failed)
    return res


def _block_data(block: FitBlock, rows: np.ndarray, prob: _Problem) -> _Data:
    valid = block.valid[rows]
    all_valid = bool(valid.all())
    w = None if block.weights is None else block.weights[rows]
    return _Data(
        x=tuple(xx if xx.shape[0] == 1 else xx[rows] for xx in block.x),
        y=block.y[rows] if all_valid else np.where(valid, block.y[rows], 0.0),
        valid=valid,
        w=w if w is None or all_valid else np.where(valid, w, 0.0),
        p0=block.p0[rows].astype(float),
        lo=block.lower[rows][:, prob.free],
        hi=block.upper[rows][:, prob.free],
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


class _State:
    """Iteration state of the running fits (rows of ``d``); ``pos`` indexes the outputs."""

    names = ("pos", "q", "r", "F", "A", "g", "D", "delta", "nfev", "code")

    def take(self, keep: np.ndarray) -> None:
        for nm in self.names:
            setattr(self, nm, getattr(self, nm)[keep])
        self.d = self.d.take(keep)


def _tr_step(A: np.ndarray, g: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Solve ``min 1/2 p^T A p + g^T p`` subject to ``||p|| <= delta``, fit by fit.

    scipy's ``solve_lsq_trust_region`` (Moré 1978; safeguarded Newton on
    ``||p(alpha)|| = delta`` with ``p(alpha) = -(A + alpha I)^-1 g``), batched,
    with the eigen-decomposition of ``A = J^T J`` in place of the SVD of ``J``.
    """
    try:  # most steps are Gauss-Newton steps inside the region: no eigen-decomposition
        p = -np.linalg.solve(A, g[:, :, None])[:, :, 0]
        gn = np.all(np.isfinite(p), axis=1) & (np.linalg.norm(p, axis=1) <= delta)
    except np.linalg.LinAlgError:
        p, gn = np.zeros_like(g), np.zeros(len(g), bool)
    if gn.all():
        return p
    rest = np.flatnonzero(~gn)
    p[rest] = _tr_step_eigh(A[rest], g[rest], delta[rest])
    return p


def _tr_step_eigh(A: np.ndarray, g: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """:func:`_tr_step` through the eigen-decomposition of ``A``."""
    sig, V = np.linalg.eigh(A)
    sig = np.maximum(sig, 0.0)
    gt = np.einsum("nkj,nk->nj", V, g)  # V^T g
    full_rank = sig[:, 0] > 1e-14 * sig[:, -1]
    with np.errstate(all="ignore"):
        gn = np.where(full_rank[:, None], gt / np.where(full_rank[:, None], sig, 1.0), 0.0)
        gn_norm = np.linalg.norm(gn, axis=1)
        alpha = np.zeros(len(sig))
        todo = ~(full_rank & (gn_norm <= delta)) & (np.abs(gt).max(axis=1, initial=0) > 0)
        if todo.any():
            s_, gt_, d_ = sig[todo], gt[todo], delta[todo]

            def phi(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                den = s_ + a[:, None]
                pn = np.linalg.norm(gt_ / den, axis=1)
                return pn - d_, -np.sum(gt_**2 / den**3, axis=1) / pn

            upper = np.linalg.norm(gt_, axis=1) / d_
            f0, fp0 = phi(np.zeros(len(d_)))
            lower = np.where(full_rank[todo], -f0 / fp0, 0.0)
            a = np.maximum(1e-3 * upper, np.sqrt(lower * upper))
            run = np.ones(len(d_), bool)  # each fit stops on its own, as in scipy
            for _ in range(10):
                out = (a < lower) | (a > upper)
                a = np.where(run & out, np.maximum(1e-3 * upper, np.sqrt(lower * upper)), a)
                f, fp = phi(a)
                upper = np.where(run & (f < 0), a, upper)
                ratio = f / fp
                lower = np.where(run, np.maximum(lower, a - ratio), lower)
                a = np.where(run, a - (f + d_) * ratio / d_, a)
                run &= ~(np.abs(f) < 0.01 * d_)
                if not run.any():
                    break
            alpha[todo] = a
        pt = np.where(todo[:, None], gt / (sig + alpha[:, None]), gn)
        p = -np.einsum("nkj,nj->nk", V, pt)
        pn = np.linalg.norm(p, axis=1)
        p *= np.where(todo & (pn > 0), delta / pn, 1.0)[:, None]  # onto the boundary, as scipy
    return np.where(np.isfinite(p), p, 0.0)


def _box_step(s: _State, freeze: np.ndarray) -> np.ndarray:
    """Trust-region step in the scaled variables ``D q`` that stays inside the box.

    Like scipy's TRF / dogbox, a step goes at most 99.5% of the way to a bound
    (so a degenerate bound such as ``stddev > 0`` cannot trap a fit). Components
    whose step would cross a bound are cut there and the other components are
    solved again with those displacements fixed (a projected-Newton active set).
    """
    A, g, D, q, lo, hi = s.A, s.g, s.D, s.q, s.d.lo, s.d.hi
    eye = np.eye(q.shape[1], dtype=bool)

    def solve(rows: Any, fz: np.ndarray, gm: np.ndarray) -> np.ndarray:
        Dr = D[rows]
        Ah = A[rows] / (Dr[:, :, None] * Dr[:, None, :])
        if fz.any():
            Ah = np.where(fz[:, :, None] | fz[:, None, :], 0.0, Ah)
            Ah[fz[:, :, None] & eye] = 1.0
        return _tr_step(Ah, np.where(fz, 0.0, gm / Dr), s.delta[rows]) / Dr

    step = solve(slice(None), freeze, g)
    lim_lo, lim_hi = q - _THETA * (q - lo), q + _THETA * (hi - q)
    cross = ~freeze & ((q + step < lim_lo) | (q + step > lim_hi))
    rows = np.flatnonzero(cross.any(axis=1))
    if rows.size:
        c = cross[rows]
        dc = np.where(c, np.clip(q[rows] + step[rows], lim_lo[rows], lim_hi[rows]) - q[rows], 0.0)
        gm = g[rows] + np.matmul(A[rows], dc[:, :, None])[:, :, 0]
        step[rows] = np.where(c, dc, solve(rows, freeze[rows] | c, gm))
    return np.clip(q + step, lim_lo, lim_hi) - q


def _trust_region(
    prob: _Problem, data: _Data, q0: np.ndarray, opts: dict[str, Any], messages: dict[int, str]
) -> dict[str, np.ndarray]:
    """Run the batched trust-region LM; per fitted row: q, status, nfev, F, ``J^T J`` at q."""
    n, K = q0.shape
    out = {"q": q0.copy(), "status": np.full(n, -1), "nfev": np.ones(n, np.int64),
           "F": np.full(n, np.nan), "A": np.zeros((n, K, K))}  # fmt: skip
    s = _State()
    s.d, s.pos, s.q, s.nfev = data, np.arange(n), q0.copy(), np.ones(n, np.int64)
    s.r = prob.resid(s.q, s.d)
    s.F = 0.5 * np.einsum("nm,nm->n", s.r, s.r)
    s.code = np.where(np.isfinite(s.F), -1, int(Status.SINGULAR))
    for i in np.flatnonzero(~np.isfinite(s.F)):
        messages[int(data.rows[i])] = "the model is non-finite at the initial parameters"
    s.A, s.g, s.D = np.zeros((n, K, K)), np.zeros((n, K)), np.zeros((n, K))
    _update_jacobian(prob, s, np.flatnonzero(s.code < 0), messages)
    s.delta = np.linalg.norm(s.q * s.D, axis=1)
    s.delta[~(s.delta > 0)] = 1.0
    xtol, maxfev = opts["xtol"], opts["maxfev"]
    while True:
        if prob.failed:
            s.code[np.isin(s.d.rows, list(prob.failed))] = Status.FAILED
        # parameters at a bound with the gradient pointing outward stay there
        freeze = ((s.q <= s.d.lo) & (s.g > 0)) | ((s.q >= s.d.hi) & (s.g < 0))
        gnorm = np.max(np.abs(np.where(freeze, 0.0, s.g)), axis=1, initial=0.0)
        s.code[(s.code < 0) & (gnorm < _GTOL)] = Status.CONVERGED
        s.code[(s.code < 0) & (s.nfev >= maxfev)] = Status.MAX_ITERATIONS
        done = s.code >= 0
        if done.any():
            for key in ("q", "nfev", "F", "A"):
                out[key][s.pos[done]] = getattr(s, key)[done]
            out["status"][s.pos[done]] = s.code[done]
            s.take(~done)
            freeze = freeze[~done]
        if s.pos.size == 0:
            return out
        step = _box_step(s, freeze)
        qn = s.q + step
        hnorm = np.linalg.norm(step * s.D, axis=1)
        pred = -np.einsum("nk,nk->n", s.g + 0.5 * np.matmul(s.A, step[:, :, None])[:, :, 0], step)
        rn = prob.resid(qn, s.d)
        s.nfev += 1
        Fn = 0.5 * np.einsum("nm,nm->n", rn, rn)
        fin = np.isfinite(Fn) & np.all(np.isfinite(qn), axis=1)
        with np.errstate(all="ignore"):
            ared = np.where(fin, s.F - Fn, -np.inf)
            ratio = np.where(pred > 0, ared / pred, np.where((pred == 0) & (ared == 0), 1.0, 0.0))
        ratio = np.where(fin, ratio, 0.0)
        # scipy's update_tr_radius; a non-finite trial shrinks the region too
        grow = (ratio > 0.75) & (hnorm > 0.95 * s.delta)
        s.delta = np.where(ratio < 0.25, 0.25 * hnorm, np.where(grow, 2 * s.delta, s.delta))
        ftol_ok = (ared < _FTOL * s.F) & (ratio > 0.25)
        xtol_ok = np.linalg.norm(step, axis=1) < xtol * (xtol + np.linalg.norm(s.q, axis=1))
        s.code[(s.code < 0) & fin & (ftol_ok | xtol_ok)] = Status.CONVERGED
        acc = fin & (ared > 0)
        s.q[acc], s.F[acc] = qn[acc], Fn[acc]
        if acc.all():
            s.r = rn
        else:
            np.copyto(s.r, rn, where=acc[:, None])
        # J at the new points; also for fits that just converged: their covariance needs it
        idx = np.flatnonzero(acc & (s.code <= Status.CONVERGED))
        _update_jacobian(prob, s, idx, messages)


def _update_jacobian(prob: _Problem, s: _State, idx: np.ndarray, messages: dict[int, str]) -> None:
    """Recompute ``A = J^T J``, ``g = J^T r`` and the scaling ``D`` at rows ``idx``."""
    if idx.size == 0:
        return
    if idx.size == s.pos.size:
        d, q, r = s.d, s.q, s.r
    else:
        d, q, r = s.d.take(idx, skip=("y",) if prob.analytic else ()), s.q[idx], s.r[idx]
    A, g = _normal(prob.jac(q, d, r), r)
    bad = ~(np.all(np.isfinite(A), axis=(1, 2)) & np.all(np.isfinite(g), axis=1))
    for i in np.flatnonzero(bad):
        messages[int(d.rows[i])] = "the Jacobian is non-finite"
    s.code[idx[bad]] = Status.SINGULAR
    A[bad], g[bad] = 0.0, 0.0
    s.A[idx], s.g[idx] = A, g
    # MINPACK's scaling: running maximum of the column norms of J (1 where zero)
    D = np.maximum(s.D[idx], np.sqrt(np.einsum("nkk->nk", A)))
    s.D[idx] = np.where(D > 0, D, 1.0)


def _finalise(prob: _Problem, data: _Data, out: dict, res: BlockResult, weighted: bool) -> None:
    """Write parameters, chi2, nfev, rank check and covariance of the fitted rows."""
    rows, K, free, status = data.rows, prob.K, prob.free, out["status"]
    res.status[rows] = np.where(status < 0, Status.FAILED, status)
    res.nfev[rows] = out["nfev"]
    sel = np.flatnonzero(np.isin(status, (Status.CONVERGED, Status.MAX_ITERATIONS)))
    d, ab = data.take(sel), rows[sel]
    p = prob.full(out["q"][sel], d.p0)
    chi2 = 2 * out["F"][sel]
    nval = d.valid.sum(axis=1)
    cov = np.full((sel.size, K, K), np.nan)
    ok = np.isfinite(chi2)

    def jac(i: np.ndarray) -> list[np.ndarray]:  # J of some of the selected rows
        di, qi = d.take(i), out["q"][sel[i]]
        return prob.jac(qi, di, None if prob.analytic else prob.resid(qi, di))

    if K and sel.size:
        cov, rank_ok = _pinv_cov(out["A"][sel], jac, nval)
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


def _pinv_cov(A: np.ndarray, jac: Any, nval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Astropy's ``pinv(J^T J)`` (SVD of J, small singular values dropped), full-rank flags.

    Rows with ``cond(J) < 1e4`` use the eigen-decomposition of ``A = J^T J``,
    as accurate there as the SVD; ``jac(idx)`` gives J of the other rows.
    """
    K = A.shape[1]
    lam, V = np.linalg.eigh(A)
    easy = lam[:, 0] > 1e-8 * lam[:, -1]
    inv = np.where(easy[:, None], 1.0 / np.where(easy[:, None], lam, 1.0), 0.0)
    rank_ok = easy.copy()
    hard = np.flatnonzero(~easy)
    if hard.size:
        Jh = np.stack(jac(hard), axis=-1)
        _, sv, Vt = np.linalg.svd(np.where(np.isfinite(Jh), Jh, 0.0), full_matrices=False)
        keep = sv > (_EPS * np.maximum(nval[hard], K) * sv[:, 0])[:, None]
        with np.errstate(all="ignore"):
            inv[hard] = np.where(keep, 1.0 / np.where(keep, sv, 1.0) ** 2, 0.0)
        V[hard] = np.swapaxes(Vt, 1, 2)
        rank_ok[hard] = keep.all(axis=1) & (sv[:, 0] > 0)
    return np.einsum("nik,nk,njk->nij", V, inv, V), rank_ok
